"""The host's choice of ``GradientNormMonitor``'s step: a counter, no device read.

With ``steps_per_execution=1`` (Keras's default) ``fit`` calls the train
function once per step, and that call is already a Python function of
Keras's (the wrapper around the compiled step). The monitor traces two
steps instead of one step with a branch: a *plain* step (Keras's step, the
NaN/inf check and the counters) and a *sampling* step (the same, plus the
sample's figures and its row, unconditionally). ``Dispatch`` stands where
``fit`` looks for the train function and picks one of the two with an
integer test on a step counter it keeps itself: the same decision the
in-graph cadence makes (``StepMeasurement._samples``), without a branch in
the compiled step and without a read from the device.

Why: a branch in every step costs a function call per step on TensorFlow
(an ``If`` op) and a conditional on XLA, and its sampling side keeps the
weights before the update alive on every step; a sub-millisecond step pays
for that every time, sampling or not. With ``steps_per_execution > 1`` one
call runs several steps, and the in-graph branch stays (``mode="branch"``).
"""

from nnkit._keras import train_function


def install(model, sample_every, set_mode):
    """Trace the monitor's step(s) for ``model`` and install them; the ``Cadence``, or ``None``.

    ``set_mode(mode)`` is called as each step is traced (``MODES`` of
    ``nnkit.callbacks._gradient_step``). One step per call: a plain and a
    sampling step behind a ``Dispatch``; several: one step with the branch
    (``None`` is returned: the hook's in-graph schedule decides).
    """
    if int(getattr(model, "steps_per_execution", 1) or 1) > 1:
        set_mode("branch")
        train_function.trace(model)
        return None
    functions = train_function.trace_variants(
        model, {mode: (lambda mode=mode: set_mode(mode)) for mode in ("plain", "sample")}
    )
    cadence = Cadence(sample_every)
    train_function.use(model, Dispatch(functions["plain"], functions["sample"], cadence))
    return cadence


class Cadence:
    """Which steps sample: ``step % N == 0``, the run's first and an epoch's last without one.

    Mirrors ``StepMeasurement._samples`` on the host. ``step`` counts as the
    hook's in-graph step counter does (one per call of the train function
    that ran a step).
    """

    def __init__(self, sample_every):
        self.sample_every = sample_every
        self.step = 0
        self.first = self.last = -1
        self.sampled_epoch = False

    def start_epoch(self, step, *, first_step, last_step):
        """At an epoch's start: the step counter and the host's facts (``-1``: none)."""
        self.step = step
        self.first, self.last = first_step, last_step
        self.sampled_epoch = False

    def samples(self):
        """Whether the next step samples."""
        step = self.step
        return (
            step % self.sample_every == 0
            or step == self.first
            or (step == self.last and not self.sampled_epoch)
        )

    def advance(self, sampled):
        """One step ran (and sampled, or not)."""
        self.step += 1
        self.sampled_epoch = self.sampled_epoch or sampled


class Dispatch:
    """The train function ``fit`` calls: the plain or the sampling one, as ``cadence`` says.

    A data iterator that runs out raises from the chosen function before a
    step runs; the counter then stays where it was.
    """

    def __init__(self, plain, sampling, cadence):
        self.plain, self.sampling, self.cadence = plain, sampling, cadence

    def __call__(self, *args, **kwargs):
        sampled = self.cadence.samples()
        result = (self.sampling if sampled else self.plain)(*args, **kwargs)
        self.cadence.advance(sampled)
        return result

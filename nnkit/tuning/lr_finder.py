"""The learning-rate range test: ``lr_find`` and the callback it drives.

It lives in ``nnkit.tuning`` rather than ``nnkit.callbacks`` because it is a
tuning procedure, not part of a training run: it trains a throw-away
stretch, reads a curve and restores the model exactly. The callback is the
measurement half (rates, per-batch loss, smoothing, the stop rule); the
function adds the state snapshot, the data and the suggestions.

Method (Smith 2015/2017; fastai ``lr_find``, Lightning ``Tuner.lr_find``):
step ``k`` of ``N`` trains one batch at the rate::

    η_k = η_min · (η_max / η_min)^(k / (N − 1))        sweep="exponential"
    η_k = η_min + (η_max − η_min) · k / (N − 1)        sweep="linear"

**Per-batch loss.** Keras's batch logs carry the epoch's running mean (the
loss tracker averages every batch since the epoch began), which lags the
rate and tilts the curve. Each sweep step here is one ``fit`` epoch of
exactly one batch (``steps_per_epoch=1``; Keras keeps the data iterator
across epochs), so the epoch's mean *is* that batch's loss, computed in the
compiled step: exact, no differencing of running means, no cancellation.

**Smoothing** (bias-corrected exponential moving average, as in Adam)::

    a_k = β·a_(k−1) + (1 − β)·L_k,   a_(−1) = 0,   s_k = a_k / (1 − β^(k+1))

The suggestions read the curve smoothed forwards and then backwards (no lag),
each loss first capped at the starting loss (the mean of the first tenth), so
that the exploding batch at the end cannot leak back into the descent.

**Stop** at the first step whose loss is not finite or whose smoothed loss
exceeds ``stop_factor`` × the best smoothed loss so far. This online average
trails the rate by about ``1/(1 − β)`` steps; the curve the suggestions read
is smoothed again backwards over it, which cancels the lag.

What it does not do: it measures the training loss at the rate of one
moment of training; it cannot tell how the rate should change over a run.
"""

import math

import keras
import numpy as np

from nnkit import _validation as v
from nnkit._arrays import to_numpy
from nnkit._keras import optimizer as keras_optimizer
from nnkit.schedules.base import Schedule, evaluate
from nnkit.tuning import _lr_args

SWEEPS = ("exponential", "linear")


def sweep_rates(min_learning_rate, max_learning_rate, steps, sweep="exponential"):
    """The ``steps`` rates of the sweep, from ``min_learning_rate`` to ``max_learning_rate``."""
    k = np.arange(steps, dtype="float64") / max(steps - 1, 1)
    if sweep == "exponential":
        return min_learning_rate * (max_learning_rate / min_learning_rate) ** k
    return min_learning_rate + (max_learning_rate - min_learning_rate) * k


def should_stop(loss, smoothed, best, stop_factor):
    """``(stop, reason)``: ``"nonfinite"``, ``"diverged"`` or ``None`` to go on."""
    if not math.isfinite(loss):
        return True, "nonfinite"
    if smoothed > stop_factor * best:
        return True, "diverged"
    return False, None


@keras.saving.register_keras_serializable(package="nnkit")
class LearningRateRangeTest(keras.callbacks.Callback):
    """The measurement half of ``lr_find``: one rate per one-batch epoch, the loss of each.

    Use it through ``nnkit.tuning.lr_find``, which sets up the one-batch
    epochs, the state snapshot and the suggestions. Used directly, run
    ``fit(..., epochs=steps, steps_per_epoch=1)`` on a model whose optimizer
    has a float learning rate (the callback sets it before each epoch); it
    records ``learning_rates``, ``losses`` (each epoch's loss: one batch's),
    ``smoothed`` and ``stop_reason``, and stops training at divergence. The
    formulas are in the module docstring of ``nnkit.tuning.lr_finder``.

    Args:
        min_learning_rate: The first rate, ``> 0``. Defaults to ``1e-7``.
        max_learning_rate: The last rate, ``> min_learning_rate``.
            Defaults to ``10.0``.
        steps: Number of rates (one batch each), an int ``>= 2``.
            Defaults to ``100``.
        sweep: ``"exponential"`` or ``"linear"`` spacing. Defaults to
            ``"exponential"``.
        stop_factor: Stop when the smoothed loss exceeds this multiple of the
            best one, ``> 1``. Defaults to ``4.0``.
        smoothing: ``β`` of the bias-corrected moving average, in
            ``[0, 1)``. Defaults to ``0.9``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range, NaN or inf.

    Example:
    >>> from nnkit.tuning import LearningRateRangeTest
    >>> test = LearningRateRangeTest(1e-4, 1.0, steps=5)
    >>> [round(r, 6) for r in test.rates()]
    [0.0001, 0.001, 0.01, 0.1, 1.0]

    References:
        Smith, "Cyclical Learning Rates for Training Neural Networks", 2017.
    """

    def __init__(
        self,
        min_learning_rate=1e-7,
        max_learning_rate=10.0,
        steps=100,
        *,
        sweep="exponential",
        stop_factor=4.0,
        smoothing=0.9,
    ):
        super().__init__()
        self.min_learning_rate = v.check_positive_number("min_learning_rate", min_learning_rate)
        self.max_learning_rate = v.check_number(
            "max_learning_rate",
            max_learning_rate,
            minimum=self.min_learning_rate,
            min_inclusive=False,
        )
        self.steps = v.check_int("steps", steps, minimum=2)
        self.sweep = v.check_one_of("sweep", sweep, SWEEPS)
        self.stop_factor = v.check_number(
            "stop_factor", stop_factor, minimum=1.0, min_inclusive=False
        )
        self.smoothing = v.check_number(
            "smoothing", smoothing, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.sets_rate = True  # lr_find turns it off when it sweeps a schedule in-graph
        self._reset()

    def rates(self):
        """The rates of the sweep, as Python floats."""
        rates = sweep_rates(self.min_learning_rate, self.max_learning_rate, self.steps, self.sweep)
        return [float(r) for r in rates]

    def _reset(self):
        self.learning_rates, self.losses, self.smoothed = [], [], []
        self.stop_reason = None
        self._average, self._best = 0.0, math.inf

    def on_train_begin(self, logs=None):
        from nnkit.callbacks._optimizer import unwrap

        self._reset()
        self._rates = self.rates()
        rate = keras_optimizer.learning_rate_object(unwrap(self.model.optimizer))
        if self.sets_rate and not isinstance(rate, keras.Variable):
            raise ValueError(
                "LearningRateRangeTest sets a float learning rate before each epoch, but this "
                "optimizer's rate is a schedule or callable: use nnkit.tuning.lr_find, which "
                f"sweeps a schedule in-graph as a multiplier. Received: learning_rate={rate!r}"
            )

    def on_epoch_begin(self, epoch, logs=None):
        if self.sets_rate and epoch < self.steps:
            from nnkit.callbacks._optimizer import unwrap

            unwrap(self.model.optimizer).learning_rate = self._rates[epoch]

    def on_epoch_end(self, epoch, logs=None):
        stop, reason = self.record(self._rates[min(epoch, self.steps - 1)], (logs or {})["loss"])
        if stop:
            self.model.stop_training = True

    def record(self, rate, loss):
        """Add one ``(rate, loss)`` point; returns ``(stop, reason)`` (pure but for the curve)."""
        loss = float(loss)
        k = len(self.losses)
        self.learning_rates.append(float(rate))
        self.losses.append(loss)
        if math.isfinite(loss):
            self._average = self.smoothing * self._average + (1.0 - self.smoothing) * loss
        smoothed = self._average / (1.0 - self.smoothing ** (k + 1))
        self.smoothed.append(smoothed if math.isfinite(loss) else math.nan)
        stop, reason = should_stop(loss, smoothed, self._best, self.stop_factor)
        if math.isfinite(loss):
            self._best = min(self._best, smoothed)
        if stop:
            self.stop_reason = reason
        return stop, reason

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def get_config(self):
        return {
            "min_learning_rate": self.min_learning_rate,
            "max_learning_rate": self.max_learning_rate,
            "steps": self.steps,
            "sweep": self.sweep,
            "stop_factor": self.stop_factor,
            "smoothing": self.smoothing,
        }


class _SweepSchedule(Schedule):
    """``schedule(t) · f(t − t_0)``: the sweep as a multiplier of a schedule, in-graph."""

    def __init__(self, schedule, start, factors, sweep):
        self.schedule, self.start, self.sweep = schedule, float(start), sweep
        self.first, self.last, self.steps = factors[0], factors[-1], len(factors)

    def value(self, step):
        k = keras.ops.clip((step - self.start) / max(self.steps - 1, 1), 0.0, 1.0)
        if self.sweep == "exponential":
            factor = self.first * keras.ops.power(self.last / self.first, k)
        else:
            factor = self.first + (self.last - self.first) * k
        return evaluate(self.schedule, step) * factor

    def get_config(self):  # installed only for the sweep, never saved
        return {}


def _snapshot(model):
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = list(model.variables) + list(optimizer.variables) + list(model.metrics_variables)
    unique = list({id(variable): variable for variable in variables}.values())
    return [(variable, np.array(to_numpy(variable), copy=True)) for variable in unique]


def _restore(snapshot):
    for variable, value in snapshot:
        variable.assign(value)


def lr_find(
    model,
    x,
    y=None,
    *,
    batch_size=32,
    steps=None,
    learning_rates=(1e-7, 10.0),
    sweep="exponential",
    stop_factor=4.0,
    seed=0,
    **deprecated,
):
    """Run the learning-rate range test on a compiled model and leave it exactly as it was.

    Use it before a sweep or a first training run, to learn which rates
    train at all: the test raises the rate batch by batch, from
    ``min_learning_rate`` to ``max_learning_rate`` (exponentially or
    linearly), records each batch's loss, stops when the loss diverges, and
    suggests a rate. The model's weights, the optimizer's variables (slots,
    ``iterations``, its rate), metric states and layers' random-seed states
    are restored bit for bit afterwards. A schedule-valued rate is swept as
    a multiplier, in-graph: ``η(t) = schedule(t) · f_k``, with
    ``f_k = η_k / schedule(t_0)``, so the curve's rates read as rates at the
    step ``t_0`` the test began; ``result.scale`` is the suggested factor for
    ``nnkit.schedules.Scaled(schedule, scale)``. The method (per-batch loss
    from one-batch epochs, the smoothing, the stop rule) is in the module
    docstring; the suggestions' rules are in ``result.rules``.

    Args:
        model: A compiled Keras model (any optimizer, nnkit's included; SAM
            and MixUp wrappers too). Required.
        x: Training inputs: arrays (or a dict of arrays), or a
            ``tf.data.Dataset`` of ``(x, y)`` batches with ``y=None``.
            Required.
        y: Training targets for array inputs. Defaults to ``None``.
        batch_size: The batch size of array inputs, as you will train.
            Defaults to ``32``.
        steps: Number of rates (one batch each), an int ``>= 2``; ``None``:
            100 (fastai's and Lightning's default), whatever the data's
            size: fewer starve the curve (11 steps over 8 decades gave
            suggestions decades off), and on data of fewer than 100 batches
            the test repeats batches. Defaults to ``None``.
        learning_rates: ``(first, last)`` rate of the sweep, ``0 < first <
            last``. Defaults to ``(1e-7, 10.0)``.
        sweep: ``"exponential"`` or ``"linear"``. Defaults to
            ``"exponential"``.
        stop_factor: Stop when the smoothed loss exceeds this multiple of its
            best, ``> 1``. Defaults to ``4.0``.
        seed: Seed of the private generator that draws the batches from
            array data (the global RNGs are not touched), an int ``>= 0``.
            Defaults to ``0``.
        **deprecated: ``min_learning_rate`` and ``max_learning_rate`` (use
            ``learning_rates``) and ``smoothing`` (the moving average's
            ``β``, 0.9; set it on a ``LearningRateRangeTest`` if you need
            another) still work for one release, with a ``DeprecationWarning``.

    Returns:
        An ``LRFinderResult``: ``learning_rates``, ``losses``, ``smoothed``,
        ``suggestions`` and their ``rules``, ``suggestion`` and its ``rule``
        (``"minimum"``: the smoothed minimum's rate ÷ 10, which landed
        nearest the best of a 15-rate sweep across bench/lr_sensitivity.py's
        three problems; else ``"steepest"``, else ``"valley"``), ``scale``,
        ``stop_reason``; ``result.plot("lr.png")`` draws the curve.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If the model is not compiled, an argument is out of
            range, or the optimizer's rate is a plain callable.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.tuning import lr_find
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(512, 4)).astype("float32")
    >>> y = x @ np.ones((4, 1), "float32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.01), loss="mse")
    >>> before = [w.copy() for w in model.get_weights()]
    >>> result = lr_find(model, x, y, batch_size=16, steps=60, learning_rates=(1e-4, 10.0))
    >>> result.stop_reason
    'diverged'
    >>> 1e-3 < result.suggestion < 1.0  # SGD diverges near 2/λ_max ≈ 1 here
    True
    >>> all((a == b).all() for a, b in zip(before, model.get_weights()))
    True

    References:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV
        2017; fastai ``Learner.lr_find``; PyTorch Lightning
        ``Tuner.lr_find``.
    """
    from nnkit.callbacks._optimizer import unwrap
    from nnkit.tuning._lr_result import PREFERENCE, RULES, LRFinderResult, suggest, zero_phase

    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    if getattr(model, "optimizer", None) is None or not model.compiled:
        raise ValueError(
            "lr_find needs a compiled model (it trains with the model's optimizer and loss): "
            f"call model.compile(...) first. Received: model={model.name!r} (not compiled)"
        )
    v.check_data("x", x)
    v.check_data("y", y, allow_none=True)
    (min_learning_rate, max_learning_rate), smoothing = _lr_args.deprecated_options(
        learning_rates, deprecated
    )
    batch_size = v.check_positive_int("batch_size", batch_size)
    seed = v.check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
    if steps is None:
        steps = _lr_args.DEFAULT_STEPS
    test = LearningRateRangeTest(min_learning_rate, max_learning_rate, steps, sweep=sweep,
                                 stop_factor=stop_factor, smoothing=smoothing)  # fmt: skip
    optimizer = unwrap(model.optimizer)
    rate = keras_optimizer.learning_rate_object(optimizer)
    if callable(rate) and not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError(
            "lr_find sweeps a float rate or a LearningRateSchedule, not a plain callable. "
            f"Received: learning_rate={rate!r}"
        )
    x_sweep, y_sweep = _lr_args.sweep_data(x, y, batch_size, test.steps, seed)

    snapshot = _snapshot(model)
    scheduled = isinstance(rate, keras.optimizers.schedules.LearningRateSchedule)
    saved = {"train_function": model.train_function, "history": getattr(model, "history", None)}
    python_rng = np.random.get_state()
    sweep_schedule, base = None, None
    try:
        if scheduled:
            start = int(to_numpy(keras_optimizer.raw_iterations(optimizer)))
            base = float(to_numpy(evaluate(rate, keras.ops.convert_to_tensor(float(start)))))
            if not base > 0:
                raise ValueError(
                    "The optimizer's schedule is 0 where the test begins, so no multiplier can "
                    f"sweep it. Received: schedule({start})={base}"
                )
            factors = [r / base for r in test.rates()]
            sweep_schedule = _SweepSchedule(rate, start, factors, test.sweep)
            optimizer.learning_rate = sweep_schedule
            test.sets_rate = False
            model.train_function = None  # trace a step that reads the sweep
        fit_kwargs = {}
        if not (hasattr(x_sweep, "repeat") and y_sweep is None):
            fit_kwargs["batch_size"] = batch_size
        model.fit(x_sweep, y_sweep, epochs=test.steps, steps_per_epoch=1, shuffle=False,
                  verbose=0, callbacks=[test], **fit_kwargs)  # fmt: skip
    finally:
        if scheduled:
            optimizer.learning_rate = rate
        if scheduled:  # the traced step read the sweep; a float rate's step is fit's own, kept
            model.train_function = saved["train_function"]
        model.history = saved["history"]
        model.stop_training = False
        np.random.set_state(python_rng)
        _restore(snapshot)

    rates = list(test.learning_rates)
    if scheduled:
        steps_run = np.arange(len(rates), dtype="float32") + sweep_schedule.start
        rates = [float(r) for r in to_numpy(sweep_schedule(steps_run))]
    smoothed = zero_phase(test.losses, test.smoothing)
    suggestions = suggest(rates, smoothed)
    rule = next((k for k in PREFERENCE if suggestions[k] is not None), None)
    choice = None if rule is None else suggestions[rule]
    return LRFinderResult(
        learning_rates=rates,
        losses=list(test.losses),
        smoothed=smoothed,
        suggestions=suggestions,
        rules=dict(RULES),
        suggestion=choice,
        rule=rule,
        scale=None if choice is None or base is None else choice / base,
        stop_reason=test.stop_reason,
    )

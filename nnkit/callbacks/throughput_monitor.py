"""Training throughput (samples/s, tokens/s), FLOP/s, MFU and peak device memory, per epoch.

The clock is ``ThroughputMonitor._clock`` (``time.perf_counter``), a private
class attribute as ``TimeLimit._clock``, so that tests script it and never
read the wall clock.
"""

import math
import time

import keras

from nnkit import _validation as v
from nnkit.callbacks import _device_facts, _optimizer, _step_flops
from nnkit.callbacks._stateful import StatefulCallback


def throughput_figures(seconds, steps, batch_size, tokens_per_sample, flops_per_step, peak_flops):
    """The figures of ``steps`` training steps that took ``seconds`` (a pure function).

    Returns a dict: ``samples_per_second = steps·B / t``, ``tokens_per_second
    = steps·B·S / t`` (``None`` without ``S``), ``flops_per_second =
    steps·F / t`` (``None`` without ``F``) and ``mfu = flops_per_second / P``
    (``None`` without ``F`` or ``P``).
    """
    samples = steps * batch_size
    rate = (lambda n: n / seconds) if seconds > 0 else (lambda n: math.nan)
    flops_per_second = None if flops_per_step is None else rate(steps * flops_per_step)
    return {
        "samples_per_second": rate(samples),
        "tokens_per_second": None
        if tokens_per_sample is None
        else rate(samples * tokens_per_sample),
        "flops_per_second": flops_per_second,
        "mfu": None
        if flops_per_second is None or not peak_flops
        else flops_per_second / peak_flops,
    }


def sequence_length(model):
    """``S`` inferred from the model's first input: ``(batch, S)`` integer ids or ``(batch, S, d)``."""
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    shape, dtype = tuple(inputs[0].shape), keras.backend.standardize_dtype(inputs[0].dtype)
    integer = "int" in dtype
    if (len(shape) == 2 and integer) or len(shape) == 3:
        return int(shape[1]) if shape[1] is not None else None
    return None


@keras.saving.register_keras_serializable(package="nnkit")
class ThroughputMonitor(StatefulCallback):
    """Log samples/s, tokens/s, FLOP/s, MFU and peak device memory at each epoch end.

    Use it to see how fast a model trains, and how much of the hardware it
    uses, next to the loss in ``History`` and ``CSVLogger`` (list it before
    them), on any backend. It has no batch hook: it reads its clock at the
    epoch begin, at the validation begin (so validation is not counted) and
    at the epoch end, and the step count once per epoch from the optimizer;
    nothing runs per batch in Python.

    Formulas, for an epoch of ``n`` training steps of global batch ``B``
    that took ``t`` seconds (the first epoch includes the compilation):
    ``samples_per_second = n·B/t``; ``tokens_per_second = n·B·S/t`` with
    ``S`` tokens per sample; ``flops_per_second = n·F/t`` with ``F`` FLOPs
    per step; ``mfu = flops_per_second / (P·D)`` with ``P`` the peak FLOP/s
    of one device and ``D`` the devices in use (``keras.distribution``'s
    mesh on JAX, the strategy's replicas on TensorFlow). The ``_window``
    figures are the same over the last ``window`` epochs: the sums of their
    steps over the sum of their seconds. ``n`` counts the raw optimizer
    steps, so a last partial batch counts as a full one.

    ``F`` is, in this order: ``flops_per_step`` if given; on JAX, XLA's
    ``cost_analysis()`` of the model's forward and backward pass on one
    batch, compiled once on shapes only (``flops_source == "compiled"``);
    else ``3 ×`` ``nnkit.search.count_flops`` (dense kernels and 1-D
    convolutions per example) ``× B`` (``"analytic"``: forward plus a
    backward of twice its cost). Both count a dense stack's input gradient
    (the "model FLOPs" of MFU). ``P`` is ``peak_flops`` if given, else the
    vendor figure of the device kind in the policy's compute dtype (H100,
    H200, A100, TPU v4/v5e/v5p/v6e: the table in ``docs/large-models.md``).
    Without ``F`` (or ``P``) the FLOP/s (or MFU) is not logged;
    ``peak_memory_bytes`` (the largest peak bytes in use over the devices
    since the process began) is logged where the device reports it, never
    on CPU. ``flops_source`` and ``peak_source`` say where ``F`` and ``P``
    came from.

    Logged keys: ``samples_per_second``, ``tokens_per_second``,
    ``flops_per_second``, ``mfu``, ``peak_memory_bytes`` and the first four
    with ``_window``; the last epoch's values are also in ``self.figures``.
    Resumable: ``BackupAndRestore`` saves the window's epochs.

    Args:
        batch_size: ``B``, the global batch size passed to ``fit``, an int
            ``>= 1`` (Keras does not tell callbacks). Required.
        tokens_per_sample: ``S``, an int ``>= 1``; ``None`` infers it from
            the model's first input, ``(batch, S)`` integer ids or
            ``(batch, S, features)``, and logs no tokens/s otherwise.
            Defaults to ``None``.
        window: The number of epochs of the ``_window`` figures, an int
            ``>= 1``. Defaults to ``5``.
        flops_per_step: ``F``, FLOPs of one training step (a number ``> 0``),
            or ``None`` to count them. Defaults to ``None``.
        peak_flops: ``P``, the peak FLOP/s of one device (a number ``> 0``),
            or ``None`` for the table. Defaults to ``None``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.callbacks import ThroughputMonitor
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile("sgd", loss="mse")
    >>> monitor = ThroughputMonitor(batch_size=8, peak_flops=1e12)
    >>> history = model.fit(np.ones((32, 4)), np.zeros((32, 2)), batch_size=8, epochs=2,
    ...                     callbacks=[monitor], verbose=0)
    >>> monitor.flops_per_step  # 3 · 2·4·2 · 8 (TensorFlow's analytic count)
    384
    >>> sorted(k for k in history.history if k.startswith("samples"))
    ['samples_per_second', 'samples_per_second_window']

    References:
        PyTorch Lightning ``lightning.pytorch.callbacks.ThroughputMonitor``;
        Chowdhery et al. 2022, "PaLM", appendix B (model FLOPs utilization);
        NVIDIA A100, H100 and H200 data sheets; Google Cloud TPU system
        architecture pages.
    """

    # No batch hooks: safe for Keras's asynchronous batch-callback dispatch.
    async_safe = True

    _clock = staticmethod(time.perf_counter)

    def __init__(
        self, batch_size, *, tokens_per_sample=None, window=5, flops_per_step=None, peak_flops=None
    ):
        super().__init__()
        self.batch_size = v.check_positive_int("batch_size", batch_size)
        self.tokens_per_sample = v.check_optional_int(
            "tokens_per_sample", tokens_per_sample, minimum=1
        )
        self.window = v.check_positive_int("window", window)
        self.flops_per_step = (
            None
            if flops_per_step is None
            else v.check_positive_number("flops_per_step", flops_per_step)
        )
        self.peak_flops = (
            None if peak_flops is None else v.check_positive_number("peak_flops", peak_flops)
        )
        self._given_flops = self.flops_per_step
        self._reset_state()

    # -- state ------------------------------------------------------------------

    def _reset_state(self):
        self.epochs = []  # [(seconds, steps)] of the last `window` epochs
        self.figures = {}
        self.flops_per_step = self._given_flops
        self.flops_source = "given" if self._given_flops is not None else None
        self.peak_source = "given" if self.peak_flops is not None else None
        self._total_peak = self.peak_flops
        self._sequence = self.tokens_per_sample
        self._start = self._train_end = None
        self._steps_before = None

    def get_state(self):
        return {"epochs": [[float(t), int(n)] for t, n in self.epochs]}

    def set_state(self, state):
        v.check_instance("state", state, dict, "a dict returned by get_state()")
        if "epochs" not in state:
            raise ValueError(
                "ThroughputMonitor state lacks 'epochs'; pass a dict returned by get_state(). "
                f"Received: state={state!r}"
            )
        self.epochs = [(float(t), int(n)) for t, n in state["epochs"]][-self.window :]

    # -- hooks ------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        model = self.model
        if self._sequence is None:
            self._sequence = sequence_length(model)
        if self.peak_flops is None:
            kind, count = _device_facts.devices(model)
            compute = keras.config.dtype_policy().compute_dtype
            per_device = _device_facts.peak_flops_per_device(kind, compute)
            if per_device is not None:
                self._total_peak = per_device * count
                self.peak_source = f"{_device_facts.table_key(kind)} {compute} x{count}"
        else:
            self._total_peak = self.peak_flops * _device_facts.devices(model)[1]

    def on_epoch_begin(self, epoch, logs=None):
        self._steps_before = self._raw_steps()
        self._train_end = None
        self._start = self._clock()

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:  # validation inside fit
            self._train_end = self._clock()

    def on_epoch_end(self, epoch, logs=None):
        end = self._train_end if self._train_end is not None else self._clock()
        if self._start is None:  # hooks driven without an epoch begin
            return
        seconds, self._start = end - self._start, None
        steps = self._raw_steps() - (self._steps_before or 0)
        self.epochs = [*self.epochs, (seconds, steps)][-self.window :]
        if self.flops_per_step is None and self.flops_source is None:
            self.flops_per_step, self.flops_source = _step_flops.step_flops(
                self.model, self.batch_size
            )
            self.flops_source = self.flops_source or "unavailable"
        figures = self._figures(seconds, steps)
        window = self._figures(sum(t for t, _ in self.epochs), sum(n for _, n in self.epochs))
        figures.update({f"{k}_window": value for k, value in window.items()})
        figures["peak_memory_bytes"] = _device_facts.peak_memory_bytes(self.model)
        self.figures = figures
        if logs is not None:
            logs.update({k: value for k, value in figures.items() if value is not None})

    def _figures(self, seconds, steps):
        return throughput_figures(
            seconds, steps, self.batch_size, self._sequence, self.flops_per_step, self._total_peak
        )

    def _raw_steps(self):
        return _optimizer.raw_iterations(_optimizer.unwrap(self.model.optimizer))

    # -- config -----------------------------------------------------------------

    def get_config(self):
        return {
            "batch_size": self.batch_size,
            "tokens_per_sample": self.tokens_per_sample,
            "window": self.window,
            "flops_per_step": self._given_flops,
            "peak_flops": self.peak_flops,
        }

"""Log the learning rate the optimizer actually used, without a per-batch hook."""

import keras

from nnkit import _validation as v
from nnkit._deprecation import no_other_arguments, renamed
from nnkit.callbacks import _optimizer
from nnkit.callbacks._stateful import StatefulCallback


@keras.saving.register_keras_serializable(package="nnkit")
class LearningRateMonitor(StatefulCallback):
    """Put the learning rate the optimizer used into the epoch logs, optionally per step.

    Use it to see the rate next to the loss in ``History``, ``CSVLogger`` and
    ``TensorBoard`` (list it before them), whether the optimizer holds a
    float, a ``LearningRateSchedule`` (``nnkit.schedules.Scaled`` included) or
    is wrapped in a ``LossScaleOptimizer``. It has no batch hook, so Keras
    keeps dispatching batch callbacks asynchronously and nothing syncs the
    host per step.

    Rule: an update evaluates ``η = schedule(t)`` at the raw step counter
    ``t`` and then increments it. After ``T`` raw steps the epoch value is
    the rate of the last update, ``schedule(T − 1)``; with
    ``gradient_accumulation_steps=G`` update ``j`` (the value of
    ``optimizer.iterations`` while it runs) uses ``schedule(j·G + G − 1)``.
    A float rate is the value of the optimizer's learning-rate variable.

    With ``sample_every=N`` the callback also records, at each epoch end,
    the rate of every update ``j`` of the epoch with ``j % N == 0`` as
    ``(j, η)`` in ``self.samples`` (reset by each ``fit``), evaluating the
    schedule once for all of them (read from ``optimizer.iterations`` once per
    epoch; the ``Scaled`` factor or the float rate is read at the epoch end).
    Limitation: the samples are recomputed from the schedule, so a rate
    changed in the middle of an epoch by code outside the schedule (assigning
    ``optimizer.learning_rate``, ``Scaled.set_scale``) is only seen as it
    stands at the epoch end. A change made at the epoch end by
    ``nnkit.callbacks.ReduceLROnPlateau`` is not attributed to the epoch that
    ended, whatever the callback order; list this callback before Keras's
    ``ReduceLROnPlateau``, which lowers the rate in its ``on_epoch_end``.

    Resumable: ``nnkit.callbacks.BackupAndRestore`` saves ``samples`` and
    the step count of the last epoch end, so a resumed run continues the
    samples of the interrupted one.

    Args:
        log_name: Key of the value in the epoch logs. The default cannot
            collide with Keras: ``keras.callbacks.TensorBoard`` overwrites
            ``"learning_rate"`` in its copy of the logs with the rate of the
            *next* step (and ``ReduceLROnPlateau`` writes that key too), so a
            monitor logging under ``"learning_rate"`` would show one rate in
            ``CSVLogger`` and another in TensorBoard for the same epoch.
            Defaults to ``"lr"``.
        sample_every: Record the rate of every ``N``-th optimizer update,
            an int ``>= 1``, or ``None`` for the epoch value only (formerly
            ``every_n_steps``, which still works for one release with a
            ``DeprecationWarning``). Defaults to ``None``.
        log_dir: Directory to write the samples to as TensorBoard scalars
            (tag ``log_name``, step ``j``); needs ``sample_every``. ``None``
            writes nothing. Defaults to ``None``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``log_name`` is empty, ``sample_every < 1``, or
            ``log_dir`` is given without ``sample_every``.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.callbacks import LearningRateMonitor
    >>> from nnkit.schedules import StepDecay
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> optimizer = keras.optimizers.SGD(StepDecay(0.1, step_size=2, factor=0.5))
    >>> model.compile(optimizer, loss="mse")
    >>> monitor = LearningRateMonitor(sample_every=1)
    >>> history = model.fit(np.ones((8, 2)), np.zeros((8, 1)), batch_size=4, epochs=2,
    ...                     callbacks=[monitor], verbose=0)
    >>> [round(lr, 4) for lr in history.history["lr"]]
    [0.1, 0.05]
    >>> [(step, round(lr, 4)) for step, lr in monitor.samples]
    [(0, 0.1), (1, 0.1), (2, 0.05), (3, 0.05)]

    References:
        PyTorch Lightning ``LearningRateMonitor``; Keras ``optimizers/base_optimizer.py``
        (when the schedule is evaluated).
    """

    # No batch hooks: safe for Keras's asynchronous batch-callback dispatch.
    async_safe = True

    _not_copied = ("_writer",)

    def __init__(self, log_name="lr", *, sample_every=None, log_dir=None, **kwargs):
        super().__init__()
        sample_every = renamed(kwargs, "every_n_steps", "sample_every", sample_every, None,
                               owner="LearningRateMonitor")  # fmt: skip
        no_other_arguments(kwargs, owner="LearningRateMonitor")
        self.log_name = v.check_str("log_name", log_name)
        self.sample_every = v.check_optional_int("sample_every", sample_every, minimum=1)
        if log_dir is not None:
            log_dir = v.check_optional_path("log_dir", log_dir)
            if self.sample_every is None:
                raise ValueError(
                    "`log_dir` needs `sample_every` (the epoch value already reaches "
                    "keras.callbacks.TensorBoard through the logs). "
                    f"Received: log_dir={log_dir!r}, sample_every=None"
                )
        self.log_dir = log_dir
        self.samples = []
        self._epoch_start = None  # raw step count at the epoch begin
        self._last_end = 0  # raw step count at the last epoch end
        self._writer = None

    def _reset_state(self):
        self.samples = []
        self._epoch_start = None
        self._last_end = 0

    def get_state(self):
        return {
            "samples": [[int(j), float(rate)] for j, rate in self.samples],
            "last_end": int(self._last_end),
        }

    def set_state(self, state):
        self.samples = [(int(j), float(rate)) for j, rate in state["samples"]]
        self._last_end = int(state["last_end"])

    def on_epoch_begin(self, epoch, logs=None):
        if self.sample_every is not None:
            optimizer = _optimizer.unwrap(self.model.optimizer)
            self._epoch_start = _optimizer.raw_iterations(optimizer)

    def on_epoch_end(self, epoch, logs=None):
        optimizer = _optimizer.unwrap(self.model.optimizer)
        raw, rate = _optimizer.last_used_rate(optimizer)
        if logs is not None:
            logs[self.log_name] = rate
        if self.sample_every is not None:
            self._sample(optimizer, raw)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _sample(self, optimizer, raw):
        accumulation = _optimizer.accumulation_steps(optimizer)
        # Without on_epoch_begin (hooks driven by hand) continue from the last epoch.
        start = self._epoch_start if self._epoch_start is not None else self._last_end
        self._epoch_start, self._last_end = None, raw
        n = self.sample_every
        first = -(-(start // accumulation) // n) * n  # first multiple of n >= first update
        updates = range(first, raw // accumulation, n)
        if not updates:
            return
        raw_steps = [_optimizer.update_to_raw_step(j, accumulation) for j in updates]
        state = _optimizer.value_before_change(optimizer, raw)
        rates = _optimizer.rates_at(optimizer, raw_steps, state=state)
        new = [(int(j), float(rate)) for j, rate in zip(updates, rates, strict=True)]
        self.samples.extend(new)
        if self.log_dir is not None:
            self._write(new)

    def _write(self, samples):
        # tf.summary.scalar lives in the optional `tensorboard` package; write
        # the same scalar event with TensorFlow's own tf.summary.write.
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR,
        )
        with self._writer.as_default():
            for step, rate in samples:
                tf.summary.write(
                    self.log_name, tf.constant(rate, "float32"), step=step, metadata=metadata
                )
        self._writer.flush()

    def get_config(self):
        return {
            "log_name": self.log_name,
            "sample_every": self.sample_every,
            "log_dir": self.log_dir,
        }

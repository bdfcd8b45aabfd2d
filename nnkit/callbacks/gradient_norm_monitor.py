"""Watch the gradients the optimizer receives, layer by layer, without a per-batch host sync."""

import functools

import keras

from nnkit import _validation as v
from nnkit._backend import require_backend
from nnkit._deprecation import no_other_arguments, renamed
from nnkit._keras import shadow, train_function
from nnkit._messages import say
from nnkit.callbacks import _gradient_cadence as cadence_lib
from nnkit.callbacks import _gradient_logs as logs_lib
from nnkit.callbacks import _gradient_reuse as reuse
from nnkit.callbacks import _optimizer
from nnkit.callbacks._gradient_hook import ROWS, capacity_for, create_hook, variables_exist
from nnkit.callbacks._nonfinite_policy import POLICIES, NonfinitePolicy
from nnkit.callbacks._stateful import StatefulCallback
from nnkit.diagnostics import DiagnosisRules

SUPPORTED_BACKENDS = ("tensorflow", "jax")


@keras.saving.register_keras_serializable(package="nnkit")
class GradientNormMonitor(NonfinitePolicy, StatefulCallback):
    """Log per-layer gradient norms, update ratios and NaN/inf gradients during ``fit``.

    Use it to see whether every layer learns (vanishing or exploding
    gradients, a learning rate that is off for some layers) and to catch the
    first non-finite gradient, on an unmodified model: ``Sequential``,
    functional or subclassed, with or without ``jit_compile``, any Keras
    optimizer (a ``LossScaleOptimizer`` is unwrapped, so norms are unscaled)
    and ``gradient_accumulation_steps`` (the micro-batch gradients that
    ``apply`` receives are measured). TensorFlow and JAX backends; under a
    ``tf.distribute`` strategy (e.g. ``MirroredStrategy``) the norms are those
    of the aggregated gradient, measured after the cross-replica all-reduce,
    so they equal a one-device run on the same global batch.

    How (details in the "Backpropagation health" docs page): it patches the
    optimizer instance's ``apply`` and traces two train functions from it, a
    plain step and a sampling step (one function with an in-graph branch
    under ``steps_per_execution > 1``); the patch is removed at
    ``on_train_end``, and the traced functions are kept and installed again
    by later fits of the same model, so a model is traced once, not once per
    ``fit``. Every step checks each group's gradients for
    NaN/inf and measures, with ``gradient_norms``, the global norm
    ``‖g‖ = √(Σ_i ‖g_i‖²)`` and the group norms ``‖g_k‖``; a *sampling* step,
    every ``sample_every``-th batch (``step % N == 0``, counting from the
    optimizer's raw iteration), the run's first batch and the last batch of an
    epoch the cadence would leave without one, also measures ``‖w_k‖`` before
    the update, the update ratio ``‖Δw_k‖ / ‖w_k‖`` and, when clipping, the
    clipped norms, and keeps its row. Which of the two steps runs is decided
    on the host from a step counter it keeps (an integer test in the call
    ``fit`` already makes; no device read, no branch in the compiled step),
    and the host reads the samples once per epoch. A model whose variables do not
    exist yet (a subclassed model TensorFlow builds while tracing the first
    step) gets the monitor's variables created there.

    The epoch logs get a few summary figures of the epoch's last sample:
    ``grad_norm`` (global), ``grad_norm_min`` and ``grad_norm_max`` (the
    smallest and largest group norms), ``clipped_grad_norm`` when clipping,
    and ``nonfinite_grads`` (non-finite steps so far); an epoch without a
    sample (steps per epoch unknown) repeats the last figures, never NaN.
    Per-group figures go to ``history``, ``report()`` (run at train end into
    ``last_report``), ``log_dir`` and, with ``log_layers=True``, the epoch
    logs. On NaN/inf gradients,
    ``"stop"`` ends training with a message naming the step and first group
    (``stop_message``) and ``"skip"`` leaves the update out and warns once per
    epoch with the count; a skipped step does not advance
    ``optimizer.iterations``, so the schedule falls a step behind ``fit``'s
    batch count for each.

    Args:
        sample_every: Sample every ``N``-th step, an int ``>= 1``; ``1``
            samples every step (formerly ``every_n_steps``, which still works
            for one release with a ``DeprecationWarning``). Defaults to ``10``.
        by: Group variables by ``"layer"`` or ``"variable"``. Defaults to
            ``"layer"``.
        on_nonfinite: ``"warn"`` (a warning at the epoch end naming the first
            step and group), ``"stop"`` (stop training; adds a read of one
            counter every ``N`` batches, dispatched asynchronously; on JAX a state
            sync in the main thread) or
            ``"skip"`` (do not apply an update whose gradients are not
            finite: weights, optimizer slots and iterations stay as they
            were). Defaults to ``"warn"``.
        rules: A ``DiagnosisRules`` for ``report()``, or ``None`` for the
            defaults. Defaults to ``None``.
        log_dir: Directory for TensorBoard scalars per sample and per-group
            histograms per epoch, or ``None``. Defaults to ``None``.
        verbose: ``1`` prints the report at train end, ``0`` is quiet.
            Defaults to ``0``.
        log_layers: Also put the per-group figures in the epoch logs (two
            keys per group). Defaults to ``False``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``sample_every < 1`` or a string option is unknown;
            at ``fit``, for ``on_nonfinite="skip"`` under a ``tf.distribute``
            strategy, when another monitor is attached to the optimizer, or on
            a backend other than TensorFlow and JAX.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.callbacks import GradientNormMonitor
    >>> model = keras.Sequential(
    ...     [keras.Input((2,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(1, name="b")],
    ...     name="net")
    >>> model.compile(keras.optimizers.SGD(0.1), loss="mse")
    >>> monitor = GradientNormMonitor(sample_every=2)
    >>> history = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, epochs=2,
    ...                     callbacks=[monitor], verbose=0)
    >>> sorted(k for k in history.history if k != "loss")
    ['grad_norm', 'grad_norm_max', 'grad_norm_min', 'nonfinite_grads']
    >>> monitor.history["steps"], history.history["nonfinite_grads"]
    ([0, 2, 4, 6], [0, 0])
    >>> monitor.layers, len(monitor.last_report.steps)
    (['net/a', 'net/b'], 4)

    References:
        optax ``transforms/_monitoring.py``; PyTorch Lightning
        ``utilities/grads.py``; Pascanu et al., "On the difficulty of training
        recurrent neural networks", ICML 2013.
    """

    async_safe = True  # the only batch hook, for "stop", reads one variable

    _not_copied = ("_hook", "_pending", "_summaries", "last_report", "_reuse", "_cadence")

    def __init__(
        self,
        sample_every=10,
        *,
        by="layer",
        on_nonfinite="warn",
        rules=None,
        log_dir=None,
        verbose=0,
        log_layers=False,
        **kwargs,
    ):
        super().__init__()
        sample_every = renamed(kwargs, "every_n_steps", "sample_every", sample_every, 10,
                               owner="GradientNormMonitor")  # fmt: skip
        no_other_arguments(kwargs, owner="GradientNormMonitor")
        self.sample_every = v.check_int("sample_every", sample_every, minimum=1)
        self.by = v.check_one_of("by", by, ("layer", "variable"))
        self.on_nonfinite = v.check_one_of("on_nonfinite", on_nonfinite, POLICIES)
        if rules is not None:
            v.check_instance("rules", rules, DiagnosisRules, "a DiagnosisRules or None")
        self.rules = rules
        self.log_dir = v.check_optional_path("log_dir", log_dir)
        self.verbose = v.check_int("verbose", verbose, minimum=0, maximum=1)
        self.log_layers = v.check_bool("log_layers", log_layers)
        self._hook = None
        self._pending = None  # the patch that creates the hook at the first trace
        self._start = None  # the hook's initial counters (see _start_counters)
        self._reuse = None  # this fit's nnkit.callbacks._gradient_reuse.Session
        self._cadence = None  # the host's step choice (one step per call), else None
        self._mode = "branch"  # the mode of the step being traced (_gradient_step.MODES)
        self._summaries = None
        self.last_report = None
        self._reset_state()

    # -- state ---------------------------------------------------------------

    def _reset_state(self):
        self.layers = []
        self.history = {name: [] for name in ROWS}
        self.nonfinite_steps = 0
        self.first_nonfinite_step = None
        self.first_nonfinite_layer = None
        self.stop_message = ""
        self._read = 0
        self._warned = 0
        self._reported = 0  # non-finite steps already warned about or acted on
        self._at_begin = 0
        self._sample = None  # figures of the last sample (logged in epochs without one)

    def get_state(self):
        return {
            "layers": list(self.layers),
            "history": {name: list(values) for name, values in self.history.items()},
            "nonfinite_steps": self.nonfinite_steps,
            "first_nonfinite_step": self.first_nonfinite_step,
            "first_nonfinite_layer": self.first_nonfinite_layer,
        }

    def set_state(self, state):
        self.layers = list(state["layers"])
        self.history = {name: list(state["history"].get(name, [])) for name in ROWS}
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.first_nonfinite_step = state["first_nonfinite_step"]
        self.first_nonfinite_layer = state["first_nonfinite_layer"]
        self._warned = self._reported = self.nonfinite_steps
        if self._attached_model() is not None:  # restored during on_train_begin
            self._start = self._start_counters()
            if self._cadence is not None:
                self._cadence.start_epoch(self._start["step"], first_step=-1, last_step=-1)
        if self._hook is not None:  # restored after the hook was created
            self._hook.set_counters(self._start)

    def _start_counters(self):
        model = self._attached_model()
        raw = _optimizer.raw_iterations(_optimizer.unwrap(model.optimizer)) if model else 0
        steps = self.history["steps"]
        first = self.first_nonfinite_layer
        return {
            "step": max(raw, steps[-1] + 1) if steps else raw,
            "nonfinite_steps": self.nonfinite_steps,
            "first_step": -1 if self.first_nonfinite_step is None else self.first_nonfinite_step,
            "first_group": self.layers.index(first) if first in self.layers else -1,
        }

    # -- hooks ---------------------------------------------------------------

    def on_train_begin(self, logs=None):
        require_backend(
            "GradientNormMonitor",
            SUPPORTED_BACKENDS,
            reason="it measures the gradients inside their compiled train steps",
        )
        super().on_train_begin(logs)
        model = self.model
        self._hook = self._pending = None
        self._start = self._start_counters()  # on the host, now
        self._read, self._at_begin = 0, self.nonfinite_steps
        capacity = capacity_for((self.params or {}).get("steps"), self.sample_every)
        self._reuse = reuse.Session(model, self, capacity)
        entry = self._reuse.take()
        if entry is not None:  # traced by an earlier fit, and nothing it read changed
            self._hook = entry.hook
            self.layers = list(entry.hook.groups.names)  # the same parameters as then
            self._hook.attach()
            self._hook.set_counters(self._start)
            self._hook.begin_run()
            train_function.use(model, entry.function)
            self._cadence = getattr(entry.function, "cadence", None)
        else:
            self._attach_new(capacity)
        if self._cadence is not None:
            self._cadence.start_epoch(self._start["step"], first_step=-1, last_step=-1)
        self._reuse.installed(train_function.current(model))
        if self.log_dir is not None:
            self._summaries = logs_lib.Summaries(self.log_dir)
        self._bind_batch_hooks()

    def _attach_new(self, capacity):
        """Create the hook (or defer it to the first trace) and trace the train function."""
        model = self.model
        if variables_exist(model):
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            self._hook = self._create_hook(capacity, patch_apply=True)
        else:
            # TensorFlow builds a model without a strategy when it traces the
            # first step (a subclassed model, or one built with a no-op
            # `build`): create the hook there, once the variables exist.
            optimizer = _optimizer.unwrap(model.optimizer)
            self._pending = shadow.shadow(
                optimizer,
                "apply",
                functools.partial(self._deferred_apply, capacity),
                owner="gradient_monitor",
            )
        # Traced at their first calls, with the patch on.
        self._cadence = cadence_lib.install(model, self.sample_every, self._set_mode)

    def _set_mode(self, mode):
        """Called as a step is traced: which of the monitor's steps it is."""
        self._mode = mode
        if self._hook is not None:
            self._hook.mode = mode

    def _create_hook(self, capacity, *, patch_apply):
        """The ``GradientHook`` for the model's trainable variables as they are now."""
        start = dict(self._start, schedule=self._schedule(self._start["step"]))
        hook, self.layers = create_hook(
            self.model,
            by=self.by,
            restored_groups=self.layers,
            sample_every=self.sample_every,
            skip=self.on_nonfinite == "skip",
            start=start,
            capacity=capacity,
            patch_apply=patch_apply,
        )
        hook.mode = self._mode
        return hook

    def _deferred_apply(self, capacity, call_next, grads, trainable_variables=None):
        """The patched ``apply`` before the hook exists: create it (at trace time), then measure."""
        if self._hook is None:
            self._hook = self._create_hook(capacity, patch_apply=False)
        return self._hook.measure(call_next, grads, trainable_variables)

    def _schedule(self, step):
        """``(first_step, last_step)`` of ``GradientHook.set_schedule`` for an epoch from ``step``."""
        steps = (self.params or {}).get("steps")
        first = -1 if self.history["steps"] else step  # no sample yet: take this one
        return first, -1 if steps is None else step + steps - 1

    def on_epoch_begin(self, epoch, logs=None):
        if self._cadence is not None:  # the host chooses each step's function
            step = self._cadence.step
            first, last = self._schedule(step)
            self._cadence.start_epoch(step, first_step=first, last_step=last)
            return
        if self._hook is None:  # created at the first trace, with this epoch's schedule
            return
        first, last = self._schedule(self._hook.current_step())
        self._hook.set_schedule(first_step=first, last_step=last)

    def on_epoch_end(self, epoch, logs=None):
        if self._hook is None:
            return
        rows = self._collect()
        self._sample = logs_lib.sample_figures(rows, self.layers) or self._sample
        if logs is not None:
            entries = logs_lib.epoch_logs(
                self._sample, self.nonfinite_steps, log_layers=self.log_layers
            )
            logs.update(entries)
        self._handle_nonfinite()
        if self._summaries is not None:
            self._summaries.write(rows, self.layers)

    def on_train_end(self, logs=None):
        self._unbind_batch_hooks()
        if self._pending is not None:
            shadow.unshadow(self._pending)
            self._pending = None
        if self._hook is None:
            if self._reuse is not None:
                self._reuse.end(None)
            return
        self._collect()
        self._handle_nonfinite()
        self._hook.remove()
        if self._reuse is not None:
            self._reuse.end(self._hook)  # keeps the traced function for the next fit
        self._hook = None
        if self._summaries is not None:
            self._summaries.close()
            self._summaries = None
        self.last_report = self.report()
        if self.verbose:
            say(str(self.last_report))

    # -- host side -----------------------------------------------------------

    def _collect(self):
        """Append the rows written since the last read to ``history``; return them."""
        self._read, rows = self._hook.read(self._read)
        for name, values in rows.items():
            self.history[name].extend(values.tolist())
        count, first_step, first_group = self._hook.counters()
        self.nonfinite_steps = count
        if first_step >= 0:
            self.first_nonfinite_step = first_step
            self.first_nonfinite_layer = self.layers[first_group] if first_group >= 0 else None
        return rows

    def report(self):
        """Diagnose every sample of the run so far.

        Returns:
            A ``nnkit.diagnostics.GradientReport`` (``str()``, ``to_dict()``,
            ``plot(path)`` for a PNG heatmap).
        """
        return logs_lib.report(self.history, self.layers, self.rules, self._attached_model())

    # -- config --------------------------------------------------------------

    def get_config(self):
        return {
            "sample_every": self.sample_every,
            "by": self.by,
            "on_nonfinite": self.on_nonfinite,
            "rules": None if self.rules is None else self.rules.get_config(),
            "log_dir": self.log_dir,
            "verbose": self.verbose,
            "log_layers": self.log_layers,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("rules") is not None:
            config["rules"] = DiagnosisRules.from_config(config["rules"])
        return cls(**config)

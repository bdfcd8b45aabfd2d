"""Watch the gradients the optimizer receives, layer by layer, without a per-batch host sync."""

import contextlib
import math
import warnings

import keras
import numpy as np

from nnkit import _validation as v
from nnkit._keras import fit as keras_fit
from nnkit._keras import train_function
from nnkit._messages import say
from nnkit.callbacks import _optimizer
from nnkit.callbacks._gradient_hook import ROWS, GradientHook
from nnkit.callbacks._stateful import StatefulCallback
from nnkit.diagnostics import DiagnosisRules, describe_layers, diagnose, group_variables

_POLICIES = ("warn", "stop", "skip")
_UNKNOWN_CAPACITY = 1024  # ring-buffer rows when the steps per epoch are unknown


def _median(values):
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


@keras.saving.register_keras_serializable(package="nnkit")
class GradientNormMonitor(StatefulCallback):
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

    At ``on_train_begin`` it patches the optimizer instance's ``apply`` and
    traces two train functions from it; ``on_train_end`` restores both. On a
    common step the plain function checks, in-graph, whether each group's
    ``Σ‖g_i‖²`` is finite (NaN/inf counters). Every ``every_n_steps``-th batch
    (``step % N == 0``, ``step`` counting the batches from the optimizer's
    raw iteration at the start) ``on_train_batch_begin`` picks the sampling
    function instead, which writes a sample measured with
    ``gradient_norms``: the global norm ``‖g‖ = √(Σ_i ‖g_i‖²)``, the group
    norms ``‖g_k‖``, the NaN/inf counts, the weight norm ``‖w_k‖`` before
    the update, the update ratio ``‖Δw_k‖ / ‖w_k‖`` and, when the optimizer
    clips, the norms after clipping. Neither function holds a branch. With
    ``steps_per_execution > 1`` one function decides in-graph. The host reads the
    samples once per epoch. Epoch logs get ``grad_norm`` and
    ``grad_norm/<group>`` (last sample of the epoch), ``update_ratio/<group>``
    (median over the epoch's samples; NaN when an epoch had none),
    ``clipped_grad_norm`` when clipping, and ``nonfinite_grads`` (non-finite
    steps so far). ``report()`` diagnoses every sample of the run; it runs
    at train end into ``last_report``.

    Args:
        every_n_steps: Sample every ``N``-th step, an int ``>= 1``; ``1``
            samples every step. Defaults to ``10``.
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

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``every_n_steps < 1`` or a string option is unknown;
            at ``fit``, for ``on_nonfinite="skip"`` under a ``tf.distribute``
            strategy, or when another monitor is attached to the optimizer.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.callbacks import GradientNormMonitor
    >>> model = keras.Sequential(
    ...     [keras.Input((2,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(1, name="b")],
    ...     name="net")
    >>> model.compile(keras.optimizers.SGD(0.1), loss="mse")
    >>> monitor = GradientNormMonitor(every_n_steps=2)
    >>> history = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, epochs=2,
    ...                     callbacks=[monitor], verbose=0)
    >>> sorted(k for k in history.history if k.startswith("grad_norm"))
    ['grad_norm', 'grad_norm/net/a', 'grad_norm/net/b']
    >>> monitor.history["steps"], history.history["nonfinite_grads"]
    ([0, 2, 4, 6], [0, 0])
    >>> monitor.layers, len(monitor.last_report.steps)
    (['net/a', 'net/b'], 4)

    References:
        optax ``transforms/_monitoring.py``; PyTorch Lightning
        ``utilities/grads.py``; Pascanu et al., "On the difficulty of training
        recurrent neural networks", ICML 2013.
    """

    async_safe = True  # the batch hook only reads one variable, for "stop"

    _not_copied = ("_hook", "_writer", "last_report", "_functions")

    def __init__(
        self,
        every_n_steps=10,
        *,
        by="layer",
        on_nonfinite="warn",
        rules=None,
        log_dir=None,
        verbose=0,
    ):
        super().__init__()
        self.every_n_steps = v.check_int("every_n_steps", every_n_steps, minimum=1)
        self.by = v.check_one_of("by", by, ("layer", "variable"))
        self.on_nonfinite = v.check_one_of("on_nonfinite", on_nonfinite, _POLICIES)
        if rules is not None:
            v.check_instance("rules", rules, DiagnosisRules, "a DiagnosisRules or None")
        self.rules = rules
        self.log_dir = v.check_optional_path("log_dir", log_dir)
        self.verbose = v.check_int("verbose", verbose, minimum=0, maximum=1)
        self._hook = None
        self._functions = None
        self._next_step = 0
        self._writer = None
        self.last_report = None
        self._reset_state()

    # -- state ---------------------------------------------------------------

    def _reset_state(self):
        self.layers = []
        self.history = {name: [] for name in ROWS}
        self.nonfinite_steps = 0
        self.first_nonfinite_step = None
        self.first_nonfinite_layer = None
        self._read = 0
        self._warned = 0
        self._at_begin = 0

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
        self._warned = self.nonfinite_steps
        if self._hook is not None:  # restored after the hook was installed
            start = self._start_counters()
            self._hook.set_counters(start)
            self._next_step = start["step"]

    def _start_counters(self):
        raw = _optimizer.raw_iterations(self._hook.optimizer) if self._hook else 0
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
        super().on_train_begin(logs)
        model = self.model
        strategy = keras_fit.explicit_strategy(model)  # TensorFlow only
        outer = model.optimizer
        if not outer.built:
            outer.build(model.trainable_variables)
        optimizer = _optimizer.unwrap(outer)
        variables = list(model.trainable_variables)
        groups = group_variables(variables, by=self.by)
        if self.layers and self.layers != list(groups.names):
            raise ValueError(
                "The restored GradientNormMonitor state has other groups than this model. "
                f"Received: state groups={self.layers!r}, model groups={list(groups.names)!r}"
            )
        self.layers = list(groups.names)
        steps = (self.params or {}).get("steps")
        capacity = math.ceil(steps / self.every_n_steps) + 1 if steps else _UNKNOWN_CAPACITY
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self._hook = GradientHook(
                optimizer,
                variables,
                groups,
                capacity=capacity,
                every_n_steps=self.every_n_steps,
                skip=self.on_nonfinite == "skip",
                start={"step": 0, "nonfinite_steps": 0, "first_step": -1, "first_group": -1},
                outer=outer,
                strategy=strategy,
                scheduled=int(getattr(model, "steps_per_execution", 1) or 1) == 1,
            )
        start = self._start_counters()
        self._hook.set_counters(start)
        self._read, self._at_begin = 0, self.nonfinite_steps
        self._next_step = start["step"]
        self._make_functions()

    def _make_functions(self):
        """``{samples?: train function}`` from the patched ``apply``, or ``None``.

        Each function wraps its own ``train_step``, which sets
        ``hook.sampling`` when it traces (JAX's ``jit`` would otherwise share
        one trace between two functions of the same bound method); with
        ``steps_per_execution > 1`` there is one function, which decides
        in-graph.
        """
        model, hook = self.model, self._hook
        if hook.mode != "scheduled":
            train_function.retrace(model)
            self._functions = None
            return

        def variant(sampling):
            def prepare():
                hook.sampling = sampling  # read by the patched apply as it traces

            return prepare

        self._functions = train_function.trace_variants(
            model, {True: variant(True), False: variant(False)}
        )

    def on_train_batch_begin(self, batch, logs=None):
        if keras.backend.backend() == "jax":
            self._stop_check_jax(batch)
        functions = self._functions
        if functions is None:
            return
        model = self.model
        current = train_function.current(model)
        if current is not functions[True] and current is not functions[False]:
            self._make_functions()  # another callback rebuilt it (e.g. to retrace)
            functions = self._functions
        sample = self._next_step % self.every_n_steps == 0
        self._next_step += 1
        chosen = functions[sample]
        if current is not chosen:  # twice per sampling period, not every batch
            train_function.use(model, chosen)

    def on_train_batch_end(self, batch, logs=None):
        # TensorFlow: may run in Keras's callback thread (async_safe); reading
        # a variable there is safe. JAX: see _stop_check_jax.
        if keras.backend.backend() == "jax":
            return
        if self.on_nonfinite != "stop" or self._hook is None or (batch + 1) % self.every_n_steps:
            return
        if self._hook.counters()[0] > self._at_begin:
            self.model.stop_training = True

    def _stop_check_jax(self, batch):
        """JAX "stop": sync the state and read the counter, in the main thread.

        The counter lives in the stateless step's state, which the next step
        donates (deletes); syncing it from Keras's callback thread raced with
        that step. ``on_train_batch_begin`` runs synchronously before the
        step, and the fit loop re-reads the state after a sync.
        """
        if self.on_nonfinite != "stop" or self._hook is None or batch == 0:
            return
        if batch % self.every_n_steps:
            return
        self.model.jax_state_sync()
        if self._hook.counters()[0] > self._at_begin:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self._hook is None:
            return
        rows = self._collect()
        if logs is not None:
            logs.update(self._epoch_logs(rows))
        self._handle_nonfinite()
        if self.log_dir is not None:
            self._write_summaries(rows)

    def on_train_end(self, logs=None):
        if self._hook is None:
            return
        self._collect()
        self._handle_nonfinite()
        self._hook.remove()
        self._hook = None
        self._functions = None
        train_function.discard(self.model)  # the next fit traces one without the patch
        if self._writer is not None:
            self._writer.close()
            self._writer = None
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

    def _epoch_logs(self, rows):
        grads, ratios = rows["grad_norms"], rows["update_ratios"]
        last = len(rows["steps"]) > 0
        logs = {"grad_norm": float(rows["global_norm"][-1]) if last else float("nan")}
        for k, name in enumerate(self.layers):
            logs[f"grad_norm/{name}"] = float(grads[-1, k]) if last else float("nan")
        for k, name in enumerate(self.layers):
            logs[f"update_ratio/{name}"] = _median(ratios[:, k])
        if "clipped_global_norm" in rows:
            clipped = rows["clipped_global_norm"]
            logs["clipped_grad_norm"] = float(clipped[-1]) if last else float("nan")
        logs["nonfinite_grads"] = self.nonfinite_steps
        return logs

    def _handle_nonfinite(self):
        if self.nonfinite_steps <= self._at_begin:
            return
        if self.on_nonfinite == "stop":
            self.model.stop_training = True
        elif self.on_nonfinite == "warn" and self.nonfinite_steps > self._warned:
            self._warned = self.nonfinite_steps
            warnings.warn(
                f"GradientNormMonitor: {self.nonfinite_steps} step(s) with NaN/inf gradients "
                f"so far; the first at step {self.first_nonfinite_step}, in "
                f"{self.first_nonfinite_layer!r}. Lower the learning rate, clip gradients or "
                "check the loss for log(0) and overflow.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _write_summaries(self, rows):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for t, step in enumerate(rows["steps"].tolist()):
                tf.summary.scalar("grad_norm", rows["global_norm"][t], step=step)
                for k, name in enumerate(self.layers):
                    tf.summary.scalar(f"grad_norm/{name}", rows["grad_norms"][t, k], step=step)
                    tf.summary.scalar(
                        f"update_ratio/{name}", rows["update_ratios"][t, k], step=step
                    )
            if len(rows["steps"]):
                for k, name in enumerate(self.layers):
                    tf.summary.histogram(
                        f"grad_norm_hist/{name}", rows["grad_norms"][:, k], step=rows["steps"][-1]
                    )
        self._writer.flush()

    def report(self):
        """Diagnose every sample of the run so far.

        Returns:
            A ``nnkit.diagnostics.GradientReport`` (``str()``, ``to_dict()``,
            ``plot(path)`` for a PNG heatmap).
        """
        history = self.history
        nonfinite = np.asarray(history["nonfinite"], "int64").reshape(-1, len(self.layers))
        model = self._attached_model()
        return diagnose(
            np.asarray(history["steps"], "int64"),
            self.layers,
            np.asarray(history["grad_norms"], "float64").reshape(nonfinite.shape),
            update_ratios=np.asarray(history["update_ratios"]).reshape(nonfinite.shape),
            weight_norms=np.asarray(history["weight_norms"]).reshape(nonfinite.shape),
            global_norms=np.asarray(history["global_norm"], "float64"),
            nonfinite=nonfinite,
            rules=self.rules,
            layer_info=describe_layers(model) if model is not None and model.built else None,
        )

    # -- config --------------------------------------------------------------

    def get_config(self):
        return {
            "every_n_steps": self.every_n_steps,
            "by": self.by,
            "on_nonfinite": self.on_nonfinite,
            "rules": None if self.rules is None else self.rules.get_config(),
            "log_dir": self.log_dir,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("rules") is not None:
            config["rules"] = DiagnosisRules.from_config(config["rules"])
        return cls(**config)

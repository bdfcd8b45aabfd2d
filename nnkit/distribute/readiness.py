"""Check that a compiled model trains under a ``tf.distribute`` strategy as it does on one device."""

from typing import NamedTuple

import keras

from nnkit import _validation as v
from nnkit._backend import require_backend
from nnkit._keras import all_reduce
from nnkit._keras import layers as keras_layers
from nnkit._keras import model as keras_model
from nnkit.distribute import clipping
from nnkit.distribute.accumulation import accumulates_gradients
from nnkit.distribute.batchnorm import batch_norm_layers

#: Severities, most severe first.
SEVERITIES = ("error", "warning", "info")


class Finding(NamedTuple):
    """One trap that applies: how severe, which one (``code``), what happens, how to fix it.

    ``objects`` names what it concerns (layer or variable paths), possibly empty.
    """

    severity: str
    code: str
    what: str
    fix: str
    objects: tuple = ()


class ReadinessReport:
    """What ``check`` found: the traps that apply to a model under a strategy, with fixes.

    ``str(report)`` is a readable list for a log; ``report.to_dict()`` gives
    plain JSON types. Findings are ordered by severity (``"error"``,
    ``"warning"``, ``"info"``); an ``"error"`` is a configuration that
    fails (or would train wrongly) under the strategy, a ``"warning"`` one
    whose results differ from one device on the same global batch.

    Attributes:
        strategy: Class name of the strategy checked, e.g. ``"MirroredStrategy"``.
        num_replicas: Its ``num_replicas_in_sync``.
        findings: List of ``Finding(severity, code, what, fix, objects)``.
            Codes: ``"steps_per_execution"``, ``"gradient_accumulation"``,
            ``"per_replica_clipping"``, ``"unsynchronized_batch_norm"``,
            ``"unaggregated_state"``, ``"state_not_traced"``.

    Example:
    >>> from nnkit.distribute.readiness import Finding, ReadinessReport
    >>> report = ReadinessReport("MirroredStrategy", 2, [Finding("warning", "x", "What.", "Fix.")])
    >>> report.ok, report.codes()
    (True, ['x'])
    """

    def __init__(self, strategy, num_replicas, findings):
        self.strategy = strategy
        self.num_replicas = num_replicas
        self.findings = sorted(findings, key=lambda f: SEVERITIES.index(f.severity))

    @property
    def ok(self):
        """True when there is no ``"error"`` finding (warnings may remain)."""
        return not self.errors

    @property
    def errors(self):
        """The ``"error"`` findings."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self):
        """The ``"warning"`` findings."""
        return [f for f in self.findings if f.severity == "warning"]

    def codes(self):
        """The codes of all findings, most severe first."""
        return [f.code for f in self.findings]

    def to_dict(self):
        """The report as plain JSON types."""
        return {
            "strategy": self.strategy,
            "num_replicas": self.num_replicas,
            "ok": self.ok,
            "findings": [{**f._asdict(), "objects": list(f.objects)} for f in self.findings],
        }

    def _headline(self):
        counts = [
            f"{n} {severity}{'' if n == 1 else 's'}"
            for severity in SEVERITIES
            if (n := sum(f.severity == severity for f in self.findings))
        ]
        replicas = f"{self.num_replicas} replica{'' if self.num_replicas == 1 else 's'}"
        return (
            f"distribution readiness under {self.strategy} ({replicas}): "
            f"{', '.join(counts) if counts else 'no findings'}"
        )

    def __str__(self):
        lines = [self._headline()]
        for f in self.findings:
            lines.append(f"[{f.severity}] {f.code}: {f.what}")
            if f.objects:
                lines.append(f"    concerns: {', '.join(f.objects)}")
            lines.append(f"    fix: {f.fix}")
        return "\n".join(lines)

    def __repr__(self):
        return f"<ReadinessReport: {self.strategy}, {self.num_replicas} replicas, {self.codes()}>"


def check(model, strategy=None, *, raise_on_error=True):
    """Report the traps that make a compiled model train differently (or fail) under a strategy.

    Keras 3 on TensorFlow runs ``fit`` under ``tf.distribute`` strategies, but
    several settings fail with cryptic messages or silently give results
    that differ from one device on the same global batch. This inspects the
    compiled ``model`` (nothing is run; one forward pass is traced, see
    below) and reports each trap that applies, with its fix:

    - ``"steps_per_execution"`` (error): ``steps_per_execution > 1`` under a
      ``MirroredStrategy``/``MultiWorkerMirroredStrategy`` with more than one
      replica fails in ``fit`` with "You must feed a value for placeholder
      tensor ... while/cond/Placeholder".
    - ``"gradient_accumulation"`` (error): the optimizer's
      ``gradient_accumulation_steps`` under a mirrored strategy (any number
      of replicas) fails with "``merge_call`` called while defining a new
      graph" (Keras updates inside a ``cond``); fix with
      ``nnkit.distribute.accumulate_gradients``.
    - ``"per_replica_clipping"`` (warning): ``clipnorm``,
      ``global_clipnorm`` or ``clipvalue`` clip each replica's part of the
      gradient before the all-reduce; fix with
      ``nnkit.distribute.clip_after_aggregation``.
    - ``"unsynchronized_batch_norm"`` (warning): trainable
      ``BatchNormalization`` layers without ``synchronized=True`` normalize
      with per-replica statistics, and their moving statistics diverge; fix
      with ``nnkit.distribute.synchronize_batch_norm``.
    - ``"unaggregated_state"`` (warning): variables with
      ``aggregation="none"`` that the forward pass writes with a value
      computed from the batch, so each replica keeps its own value and the
      one read (and saved) after training is the first replica's.

    How written variables are found: the forward pass
    ``model(x, training=True)`` is traced once in a ``tf.function`` (from
    the model's input specs; nothing is executed) inside a
    ``keras.StatelessScope``, which records every ``Variable.assign``
    instead of applying it. A recorded variable is flagged when its
    aggregation is ``"none"`` and the assigned value depends on the input
    batch in the traced graph. This is exact for what the forward pass
    writes, and it leaves out writes that cannot diverge: a call counter
    (``assign_add(1)``) or a random seed state advances identically on every
    replica. A static rule ("every non-trainable variable") would instead
    flag frozen weights, ``Normalization`` statistics and seed states, none
    of which diverge. Not seen: writes outside the forward pass (a custom
    ``train_step``, callbacks) and raw ``tf.Variable.assign`` calls.
    ``BatchNormalization`` statistics are covered by their own finding (and
    are safe once synchronized). When the forward pass cannot be traced (a
    subclassed model that was never called, unusual inputs) an
    ``"info"`` finding ``"state_not_traced"`` lists the non-trainable
    ``aggregation="none"`` variables to review instead.

    With one replica only the first two checks apply (the others make no
    difference there).

    Args:
        model: A compiled ``keras.Model`` (TensorFlow backend).
        strategy: The ``tf.distribute.Strategy`` to check against, or
            ``None`` for the strategy the model was created under
            (``model.distribute_strategy``). Defaults to ``None``.
        raise_on_error: When True and a finding is an ``"error"``, raise
            ``ValueError`` (the message lists every finding; the exception's
            ``report`` attribute holds the report). Defaults to True.

    Returns:
        A ``ReadinessReport``; ``print(report)`` shows each finding and its fix.

    Raises:
        ValueError: If the backend is not TensorFlow, the model is not
            compiled, or (with ``raise_on_error``) a trap is an error.
        TypeError: If ``model`` is not a ``keras.Model``, ``strategy`` not
            a ``tf.distribute.Strategy``, or ``raise_on_error`` not a bool.

    Example:
    >>> import keras, tensorflow as tf
    >>> from nnkit.distribute import check
    >>> strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    >>> with strategy.scope():
    ...     model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    ...     model.compile(optimizer=keras.optimizers.SGD(0.1, global_clipnorm=1.0), loss="mse")
    >>> check(model).codes()
    ['per_replica_clipping']
    >>> model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    >>> check(model, raise_on_error=False).codes()
    ['steps_per_execution']
    """
    require_backend(
        "nnkit.distribute.check",
        ("tensorflow",),
        reason="it covers tf.distribute strategies; on JAX, keras.distribution has none of "
        "these traps",
    )
    import tensorflow as tf

    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model, not {type(model).__name__}. Received: model={model!r}"
        )
    if strategy is None:
        strategy = model.distribute_strategy
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            f"`strategy` must be a tf.distribute.Strategy or None, not "
            f"{type(strategy).__name__}. Received: strategy={strategy!r}"
        )
    v.check_bool("raise_on_error", raise_on_error)
    if not model.compiled:
        raise ValueError(
            "`check` inspects a compiled model (its optimizer and steps_per_execution): call "
            f"`model.compile(...)` first. Received: model={model.name!r} (not compiled)"
        )
    mirrored = isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    )
    replicas = int(strategy.num_replicas_in_sync)
    findings = []
    if mirrored:
        findings += _execution_findings(model, replicas)
    if replicas > 1:
        findings += _clipping_findings(model.optimizer)
        findings += _batch_norm_findings(model)
        findings += _state_findings(model)
    report = ReadinessReport(type(strategy).__name__, replicas, findings)
    if raise_on_error and not report.ok:
        error = ValueError(f"The model is not ready for {report.strategy}.\n{report}")
        error.report = report
        raise error
    return report


def _execution_findings(model, replicas):
    findings = []
    steps = int(model.steps_per_execution or 1)
    if steps > 1 and replicas > 1:
        findings.append(
            Finding(
                "error",
                "steps_per_execution",
                f"steps_per_execution={steps} fails under a mirrored strategy with {replicas} "
                "replicas (Keras 3 fit: 'You must feed a value for placeholder tensor ... "
                "while/cond/Placeholder').",
                "Compile with steps_per_execution=1 (the default); to amortize the per-step "
                "overhead, use a larger global batch_size instead (where memory is the limit, "
                "accumulate micro-batches: nnkit.distribute.accumulate_gradients).",
            )
        )
    inner = all_reduce.target_optimizer(model.optimizer)
    accumulation = inner.gradient_accumulation_steps
    if accumulation and not accumulates_gradients(inner):
        findings.append(
            Finding(
                "error",
                "gradient_accumulation",
                f"The optimizer's gradient_accumulation_steps={accumulation} fails under a "
                "mirrored strategy (Keras 3 updates the variables inside a cond: '`merge_call` "
                "called while defining a new graph or a tf.function').",
                "Apply nnkit.distribute.accumulate_gradients(model.optimizer) before fit (the "
                "same accumulation, with the all-reduce outside the cond), or reach the global "
                "batch with batch_size over the replicas if it fits in memory.",
            )
        )
    return findings


def _clipping_findings(optimizer):
    settings = clipping.clip_settings(optimizer)
    if not settings or clipping.clips_after_aggregation(optimizer):
        return []
    given = ", ".join(f"{k}={val}" for k, val in settings.items())
    return [
        Finding(
            "warning",
            "per_replica_clipping",
            f"The optimizer clips with {given} on each replica's part of the gradient, before "
            "the all-reduce: updates differ from one device on the same global batch.",
            "nnkit.distribute.clip_after_aggregation(model.optimizer) before fit (again after "
            "load_model): the same clipping, applied to the aggregated gradient.",
        )
    ]


def _batch_norm_findings(model):
    paths = tuple(
        layer.path or layer.name
        for layer in batch_norm_layers(model)
        if layer.trainable and not layer.synchronized
    )
    if not paths:
        return []
    return [
        Finding(
            "warning",
            "unsynchronized_batch_norm",
            f"{len(paths)} BatchNormalization layer(s) normalize with per-replica batch "
            "statistics and keep per-replica moving statistics (the first replica's are read "
            "and saved).",
            "nnkit.distribute.synchronize_batch_norm(model): statistics of the global batch, "
            "as on one device.",
            paths,
        )
    ]


def _state_findings(model):
    bn_ids = {id(var) for layer in batch_norm_layers(model) for var in layer.variables}
    written, reason = _written_from_batch(model)
    if written is None:
        seeds = {
            id(gen.state)
            for layer in keras_layers.walk(model)
            for gen in keras_layers.seed_generators(layer)
        }
        paths = tuple(
            var.path
            for var in model.non_trainable_variables
            if var.aggregation == "none" and id(var) not in bn_ids | seeds
        )
        if not paths and model.built:
            return []
        return [
            Finding(
                "info",
                "state_not_traced",
                f"Could not trace the forward pass ({reason}), so variables written during "
                "training are unknown. "
                + (
                    "These non-trainable variables have aggregation='none': if a layer writes "
                    "them from the batch, each replica keeps its own value."
                    if paths
                    else "The model is not built: its variables do not exist yet."
                ),
                "Build the model with known input shapes (keras.Input) so that the check can "
                "trace it; state written from the batch needs aggregation='mean' or values "
                "computed from all-reduced quantities.",
                paths,
            )
        ]
    paths = tuple(
        var.path for var in written if var.aggregation == "none" and id(var) not in bn_ids
    )
    if not paths:
        return []
    return [
        Finding(
            "warning",
            "unaggregated_state",
            f"{len(paths)} variable(s) with aggregation='none' are written from the batch during "
            "training: each replica keeps its own value, and the first replica's is read and "
            "saved.",
            "Create them with aggregation='mean' in add_weight when the replicas' values should "
            "be averaged (e.g. moving averages of batch statistics); for totals (e.g. a sample "
            "counter) write a value computed from all-reduced quantities. Not 'sum': Keras's "
            "assign_add assigns the new total, so 'sum' adds the old total once per replica.",
            paths,
        )
    ]


def _input_specs(model):
    """``tf.TensorSpec`` structure of the model's inputs, or ``None`` when unknown."""
    import tensorflow as tf

    def spec(tensor):
        return tf.TensorSpec(tensor.shape, tensor.dtype)

    if isinstance(model, keras.Sequential):
        try:
            inputs = model.inputs
        except AttributeError:  # not built yet
            return None
        return spec(inputs[0]) if len(inputs) == 1 else None
    if keras_model.is_functional(model):
        return tf.nest.map_structure(spec, model.input)
    shapes = keras_model.build_shapes(model)
    if len(shapes) == 1:
        (shape,) = shapes.values()
        if (
            isinstance(shape, (tuple, list))
            and shape
            and all(d is None or isinstance(d, int) for d in shape)
        ):
            return tf.TensorSpec((None, *shape[1:]), model.input_dtype)
    return None


def _depends_on(tensor, sources):
    """Whether any op in ``sources`` is an ancestor of ``tensor`` in its graph."""
    seen, stack = set(), [tensor.op]
    while stack:
        op = stack.pop()
        if op in sources:
            return True
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in op.inputs)
    return False


def _written_from_batch(model):
    """(variables the forward pass writes from the batch, None), or (None, why not traced)."""
    import tensorflow as tf

    specs = _input_specs(model)
    if specs is None:
        return None, "the input shapes are unknown"
    by_id = {id(var): var for var in model.variables}
    written = []

    def forward(inputs):
        with keras.StatelessScope(collect_losses=True) as scope:
            model(inputs, training=True)
        sources = {t.op for t in tf.nest.flatten(inputs)}
        for key, value in scope.state_mapping.items():
            if key in by_id and tf.is_tensor(value) and _depends_on(value, sources):
                written.append(by_id[key])

    try:
        tf.function(forward).get_concrete_function(specs)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "not traced"
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return written, None

"""Every public nnkit component in a short training, on one device or under a strategy.

Discovery is automatic: every public name of every subpackage
(``nnkit.SUBPACKAGES`` and each ``__all__``) gets a *kind* from its base class
(schedule, callback, layer, loss, regularizer, initializer) or, for functions,
from ``FUNCTIONS`` (losses: from their subpackage); classes are made from their
row in ``tests/examples.py``.
``SKIP`` lists, with the reason, the public names that are not a training
component. A name that is neither is reported by ``unclassified()``, so a new
kind of component fails the conformance test instead of going untested.

``train(component, strategy)`` runs the same short, seeded, unshuffled training
for one component and returns everything a strategy could change as a flat
``{name: numpy array}``: initial and final weights (non-trainable ones too),
optimizer variables, the epoch logs and the component's own state (callback
decisions via ``get_state()``, monitor norms, the ``Scaled`` factor).
"""

import contextlib
import dataclasses
import importlib
import inspect
import numbers
import re
import traceback

import keras
import numpy as np
import tensorflow as tf

import nnkit
import nnkit.meta
from tests.examples import ABSTRACT, EXAMPLES

SEED = 0
WIDTH = 16  # input features
ROWS = 64  # training examples
GLOBAL_BATCH = 16  # Keras's batch_size is the global batch: 8 rows per replica on two
EPOCHS = 2
CALLBACK_EPOCHS = 5  # EarlyStopping(start_from_epoch=1, patience=3) stops in the last one

#: Callbacks that refuse to run without nnkit's ``BackupAndRestore``: trained with one
#: before them (ExceptionSave's save on an exception under the strategy:
#: tests/distribute/test_exception_save_mirrored.py).
NEEDS_BACKUP = {"ExceptionSave"}

# Public names that are not a training component, with the reason. Keep it short.
#: State that measures wall-clock time: it differs between any two runs, so the
#: comparison of a mirrored run with one device leaves it out (the decisions made
#: from it, such as ``stopped_epoch``, are still compared).
WALL_CLOCK_STATE = {
    "TimeLimit": ("elapsed", "longest_batch", "longest_epoch", "longest_tail"),
    "ThroughputMonitor": ("epochs",),
}
#: Epoch-log keys measured with the wall clock, left out of the comparison likewise.
WALL_CLOCK_LOGS = {
    "ThroughputMonitor": ("samples_per_second", "tokens_per_second", "flops_per_second", "mfu"),
}

SKIP = {
    "callbacks.PREEMPTED_EXIT_STATUS": "a constant (the exit status 75), not a component",
    "callbacks.PreemptionSave": "host-side signal handling that stops fit towards a "
    "BackupAndRestore (covered); it writes nothing in the step (tests/callbacks/test_preemption.py)",
    # Architecture search: host-side drivers and descriptions; each trial is an
    # ordinary fit (nnkit.search).
    "search.Choice": "one choice of an architecture space, a value type",
    "search.stage_choices": "builds a space's choices, a value type",
    "search.conv1d_space": "an architecture space (builds ordinary Keras models)",
    "search.residual_mlp_space": "an architecture space (builds ordinary Keras models)",
    "search.conv2d_space": "an architecture space (builds ordinary Keras models)",
    "search.measure_cost": "host-side measurement of one model's cost (counts, timed predict)",
    "search.measure_latency": "host-side timing of one model's predict on this machine",
    "search.plot_pareto": "host-side figure of finished trials",
    "search.count_flops": "host-side analysis of a built model",
    "search.evaluations_to_reach": "host-side analysis of a finished search",
    "search.pareto_front": "host-side analysis of finished trials",
    "search.make_searcher": "a searcher's ask/tell logic, host-side",
    "search.simulate": "a search scored by table lookup, no training",
    "search.search_architectures": "search driver (runs ordinary fits)",
    "search.AsyncSearch": "a searcher shared by workers, host-side (a lock and a journal)",
    "search.OneShotSupernet": "experimental weight-sharing study: one ordinary fit of a "
    "masked model (tests/search/test_supernet.py)",
    "distribute.accumulate_gradients": "patches the optimizer's update under the strategy; its "
    "mirrored tests are tests/distribute/test_accumulation.py",
    "distribute.remove_accumulation_patch": "undoes accumulate_gradients "
    "(tests/distribute/test_accumulation.py)",
    # Measurements and host-side analysis; they run in-graph inside
    # GradientNormMonitor, which is covered (kind "callback").
    "diagnostics.describe_layers": "host-side description of a model, not a training component",
    "diagnostics.diagnose": "host-side analysis of sampled norms (GradientNormMonitor.report)",
    "diagnostics.first_nonfinite_group": "measurement used inside GradientNormMonitor",
    "diagnostics.gradient_norms": "measurement used inside GradientNormMonitor",
    "diagnostics.group_variables": "measurement helper used by GradientNormMonitor",
    "diagnostics.update_ratios": "measurement used inside GradientNormMonitor",
    "diagnostics.weight_norms": "measurement used inside GradientNormMonitor",
    "diagnostics.DiagnosisRules": "thresholds passed to GradientNormMonitor (in its example)",
    # The strategy tooling itself: each has its own mirrored tests in tests/distribute/.
    "distribute.check": "the readiness check itself (tests/distribute/test_readiness.py)",
    "distribute.choose_strategy": "strategy selection (tests/distribute/test_selection.py)",
    "distribute.strategy": "strategy selection (tests/distribute/test_selection.py)",
    "distribute.clip_after_aggregation": "mirrored equality in tests/distribute/test_clipping.py",
    "distribute.remove_clip_after_aggregation": "undoes clip_after_aggregation",
    "distribute.synchronize_batch_norm": "applied to every mirrored run here; own tests too",
    "distribute.global_batch_size": "arithmetic (tests/distribute/test_data_parallel.py)",
    # An optimizer bound to its model (KFAC registers the model's layers).
    "optimizers.KFAC": "needs its model registered; mirrored equality in "
    "tests/optimizers/test_kfac_fit.py",
    "distribute.per_replica_batch_size": "arithmetic (tests/distribute/test_data_parallel.py)",
    "distribute.input_pipeline": "tf.data helper (tests/distribute/test_data_parallel.py)",
    "distribute.scale_learning_rate": "returns a schedule; schedules are covered by kind",
    "distribute.fix_multi_worker_fit": "multi-worker fit (tests/distribute/test_multi_worker.py)",
    "distribute.remove_multi_worker_fit_fix": "undoes fix_multi_worker_fit",
    "distribute.multi_worker_fit_is_broken": "detects a Keras bug (test_multi_worker.py)",
    "distribute.is_chief": "multi-worker role (tests/distribute/test_multi_worker.py)",
    "distribute.worker_directory": "multi-worker paths (tests/distribute/test_multi_worker.py)",
    "distribute.remove_worker_directory": "multi-worker paths (test_multi_worker.py)",
    "distribute.device_mesh": "JAX-backend model parallelism, not tf.distribute",
    "distribute.mlp_layout_map": "JAX-backend model parallelism, not tf.distribute",
    "distribute.model_parallel": "JAX-backend model parallelism, not tf.distribute",
    "distribute.verify_layout": "JAX-backend model parallelism, not tf.distribute",
    "distribute.plan_layout": "JAX-backend sharding (keras.distribution), not tf.distribute",
    "distribute.check_layout": "JAX-backend sharding (keras.distribution), not tf.distribute",
    "distribute.LayoutReport": "plan_layout's result, not a component",
    "distribute.VariablePlan": "plan_layout's result, not a component",
    "distribute.estimate_memory": "JAX-backend ahead-of-time compile, not tf.distribute",
    "distribute.MemoryEstimate": "estimate_memory's result, not a component",
    "distribute.choose_layout": "JAX-backend ahead-of-time compiles, not tf.distribute",
    "distribute.LayoutChoice": "choose_layout's result, not a component",
    "distribute.Remat": "JAX-backend rematerialization (jax.checkpoint), refused on TensorFlow; "
    "tests/distribute/sharding/test_remat.py",
    "distribute.shard_optimizer_state": "JAX-backend ZeRO-1 (keras.distribution), not tf.distribute",
    # Hyperparameter search: drivers around ordinary fits of nnkit.models.mlp models
    # (covered); MedianStopping, a callback, is covered by kind.
    "tuning.MLPHyperModel": "keras-tuner HyperModel building nnkit.models.mlp (covered)",
    "tuning.SearchSpace": "hyperparameter ranges, a value type",
    "tuning.tune": "search driver (runs ordinary fits)",
    "tuning.lr_find": "a range test (one-batch fits, restored); under MirroredStrategy in "
    "tests/tuning/test_lr_finder.py",
    "tuning.LearningRateRangeTest": "lr_find's callback: sets a float rate per one-batch epoch "
    "(refuses a schedule); covered through lr_find",
    "tuning.rerun_best": "search driver (reruns ordinary fits)",
    "tuning.sensitivity_report": "host-side analysis of a finished study",
    # Meta-learning: the task samplers are host-side data sources (numpy); the learners
    # (MetaSGD included) are covered (kind "meta").
    "meta.sinusoid_family": "host-side task sampler (numpy), feeds the learners (covered)",
    "meta.digits_tasks": "host-side task sampler (numpy), feeds the learners (covered)",
    # Train-step wrappers (keras.Model subclasses, not a component of a plain fit): their
    # MirroredStrategy behaviour is tested against closed forms in their own files.
    "models.SharpnessAwareMinimization": "own mirrored tests (tests/models/test_sharpness_aware.py)",
    "models.MixUp": "own mirrored test (tests/models/test_mixup.py)",
    "callbacks.recompute_batch_norm": "host-side forward passes; used by StochasticWeightAveraging",
}

# Public functions that build or change a component, with the example call the
# harness uses: (kind, factory). Functions of ``nnkit.losses`` need no row (they
# are losses, with targets from the losses conformance tests).
FUNCTIONS = {
    "models.mlp": (
        "model",
        # Dropout 0: the equality test needs a deterministic forward pass (dropout
        # is compared statistically in the conformance test); batch normalization
        # is synchronized for the mirrored run, as nnkit.distribute.check advises.
        lambda: nnkit.models.mlp(
            WIDTH, [12, 8], residual=True, normalization="batch", output_units=2
        ),
    ),
    "initializers.for_activation": (
        "initializer",
        lambda: nnkit.initializers.for_activation("tanh", seed=3),
    ),
    "initializers.lsuv": ("data_init", lambda: nnkit.initializers.lsuv),
    "regularizers.apply_regularization": (
        "model_transform",
        lambda: (
            lambda model: nnkit.regularizers.apply_regularization(
                model, nnkit.regularizers.L2(0.01)
            )
        ),
    ),
    "layers.mc_predict": ("inference", lambda: nnkit.layers.mc_predict),
}

_CLASS_KINDS = (
    # Before Layer: a meta-learner is a keras.Model (so a Layer) trained on batches of tasks.
    (nnkit.meta.MetaLearner, "meta"),
    (keras.optimizers.schedules.LearningRateSchedule, "schedule"),
    (keras.callbacks.Callback, "callback"),
    (keras.layers.Layer, "layer"),
    (keras.losses.Loss, "loss"),
    (keras.regularizers.Regularizer, "regularizer"),
    (keras.initializers.Initializer, "initializer"),
    (keras.optimizers.Optimizer, "optimizer"),
)
#: Kinds ``train`` knows how to run; "inference" is compared statistically.
TRAINED_KINDS = (
    "schedule",
    "callback",
    "layer",
    "loss",
    "regularizer",
    "initializer",
    "data_init",
    "model",
    "model_transform",
    "optimizer",
    "meta",
)


@dataclasses.dataclass(frozen=True)
class Component:
    """One public nnkit name: ``key`` ("sub.Name"), its kind, and a factory for an example."""

    key: str
    kind: str
    make: object

    def __str__(self):
        return self.key


def public_names():
    """``[(key, object)]`` for every name in every subpackage's ``__all__``."""
    found = []
    for sub in nnkit.SUBPACKAGES:
        module = importlib.import_module(f"nnkit.{sub}")
        found += [(f"{sub}.{name}", getattr(module, name)) for name in module.__all__]
    return found


def _kind(key, obj):
    if inspect.isclass(obj):
        for base, kind in _CLASS_KINDS:
            if issubclass(obj, base):
                return kind
        return None
    if inspect.isfunction(obj):
        if key in FUNCTIONS:
            return FUNCTIONS[key][0]
        if key.startswith("losses."):
            return "loss"
    return None


def discover():
    """Every public training component, as ``Component`` objects sorted by key."""
    components = []
    for key, obj in public_names():
        if key in SKIP or key in ABSTRACT:
            continue
        kind = _kind(key, obj)
        if kind is None:
            continue
        if inspect.isclass(obj):
            make = EXAMPLES.get(key)
        elif key in FUNCTIONS:
            make = FUNCTIONS[key][1]
        else:
            make = lambda obj=obj: obj  # noqa: E731 - a loss function is its own example
        components.append(Component(key, kind, make))
    return sorted(components, key=lambda c: c.key)


def unclassified():
    """Public names that are neither a known kind of component nor skipped (should be empty)."""
    return sorted(
        key
        for key, obj in public_names()
        if key not in SKIP
        and key not in ABSTRACT
        and (_kind(key, obj) is None or (inspect.isclass(obj) and key not in EXAMPLES))
    )


def stale_skips():
    """``SKIP`` and ``FUNCTIONS`` entries that are no longer public names."""
    public = {key for key, _ in public_names()}
    return sorted((set(SKIP) | set(FUNCTIONS)) - public)


# -- data -----------------------------------------------------------------------


def features(rows=ROWS, seed=1):
    return np.random.default_rng(seed).normal(size=(rows, WIDTH)).astype("float32")


def regression_targets(x, units=2):
    weights = np.random.default_rng(2).normal(size=(x.shape[1], units)).astype("float32")
    return np.tanh(x @ weights / 4.0).astype("float32")


def meta_tasks(tasks=ROWS, shots=4, queries=5, features=2, seed=1):
    """``(inputs, y_query)``: linear regression tasks for the meta-learners' examples."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(tasks, features, 1))
    xs = rng.normal(size=(tasks, shots, features))
    xq = rng.normal(size=(tasks, queries, features))
    inputs = {"x_support": xs, "y_support": np.tanh(xs @ w), "x_query": xq}
    return {k: a.astype("float32") for k, a in inputs.items()}, np.tanh(xq @ w).astype("float32")


def loss_targets(key):
    """``(units, y)`` for a loss, from the losses conformance table (16 rows, repeated)."""
    from tests.losses.test_conformance import FUNCTION_TARGETS, TARGETS

    name = key.split(".", 1)[1]
    units, y = TARGETS[FUNCTION_TARGETS.get(name, name)]
    return units, np.concatenate([y] * (ROWS // len(y)))


# -- losses ---------------------------------------------------------------------


def training_loss(loss):
    """``loss`` with ``reduction="none"`` replaced by Keras's default scalar reduction.

    Keras 3.15 under a strategy logs N× the one-device training loss for a
    loss with ``reduction="none"`` (its loss tracker un-scales the per-sample
    vector); the gradients agree. The losses conformance tests train with
    the scalar reduction too.
    """
    if not isinstance(loss, keras.losses.Loss) or loss.reduction != "none":
        return loss
    config = loss.get_config()
    config["reduction"] = "sum_over_batch_size"
    return type(loss).from_config(config)


def per_shard(loss, shards):
    """A loss that applies ``loss`` to each of ``shards`` equal parts of the batch.

    What a replica computes under a strategy: its part of the global batch
    only. Per-part values are summed for ``reduction="sum"`` and averaged
    otherwise, as Keras's scaling by ``1/num_replicas`` does across replicas.
    """
    loss = training_loss(loss)
    reduce = keras.ops.sum if getattr(loss, "reduction", None) == "sum" else keras.ops.mean

    def loss_per_shard(y_true, y_pred):
        size = keras.ops.shape(y_pred)[0] // shards
        parts = [
            loss(y_true[i * size : (i + 1) * size], y_pred[i * size : (i + 1) * size])
            for i in range(shards)
        ]
        return reduce(keras.ops.stack([keras.ops.cast(p, "float32") for p in parts]))

    return loss_per_shard


def couples_batch(component, shards):
    """Whether the loss of a sample depends on the other samples of its batch.

    Compares the per-sample losses of a batch with those of its ``shards``
    parts computed separately.
    """
    loss = component.make()
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        config["reduction"] = "none"
        loss = type(loss).from_config(config)
    units, y = loss_targets(component.key)
    y = y[:GLOBAL_BATCH]
    y_pred = np.random.default_rng(4).normal(size=(GLOBAL_BATCH, units)).astype("float32")
    whole = np.asarray(loss(y, y_pred))
    size = GLOBAL_BATCH // shards
    parts = np.concatenate(
        [
            np.asarray(loss(y[i : i + size], y_pred[i : i + size]))
            for i in range(0, GLOBAL_BATCH, size)
        ]
    )
    return not np.allclose(whole, parts, rtol=1e-5, atol=1e-6)


# -- deterministic variants -----------------------------------------------------

RANDOM_RATE_KEYS = ("dropout", "rate")


def seed_generators(layer):
    """The ``keras.random.SeedGenerator`` objects of ``layer`` and its sublayers.

    A layer draws random numbers in training mode (dropout and the like) through
    these; looking at them, not at outputs, also catches randomness that a
    zero-initialized kernel hides at initialization.
    """
    return [
        generator
        for sublayer in layer._flatten_layers(include_self=True, recursive=True)
        for generator in getattr(sublayer, "_seed_generators", ())
    ]


def deterministic(layer):
    """The same layer with every random rate (``dropout``, ``rate``) set to 0."""
    config = layer.get_config()
    for key in RANDOM_RATE_KEYS:
        if key in config:
            config[key] = 0.0
    variant = type(layer).from_config(config)
    if seed_generators(variant):
        raise ValueError(
            f"{type(layer).__name__} still draws random numbers with {RANDOM_RATE_KEYS} set "
            "to 0: teach tests/distribute/_harness.py::deterministic its random arguments."
        )
    return variant


# -- variables created during a run -----------------------------------------------

# Frames that are the machinery of variable creation, not its author.
_MACHINERY = (
    "/tensorflow/",
    "/keras/src/backend/",
    "/keras/src/layers/layer.py",
    "/keras/src/optimizers/base_optimizer.py",
    "/keras/src/utils/tracking.py",
    # nnkit's optimizer base: its add_state wraps add_variable (the author is the subclass's
    # build). The optimizers' __init__ chain is handled in _machinery (Keras's own
    # `iteration` and `learning_rate` are made there, by keras.optimizers.Optimizer).
    "/nnkit/optimizers/_base.py",
    __file__,
)


def _machinery(frame):
    if any(m in frame.filename for m in _MACHINERY):
        return True
    return "/nnkit/optimizers/" in frame.filename and frame.name == "__init__"


#: The aggregation of every variable that nnkit code itself creates, by the start
#: of the variable's name. ``tests/distribute/test_aggregation_audit.py`` checks
#: each creation site in ``nnkit/`` against it; a new kind of variable needs a row.
INTENDED_AGGREGATION = {
    # Scaled's factor: assigned on the host (set_scale, ReduceLROnPlateau), read in
    # the train step, never written there: one value, the first replica's.
    "learning_rate_scale": "only_first_replica",
    # GradientNormMonitor's counters and sample buffers: written in the train step
    # with values computed from the all-reduced gradients, the same on every replica.
    "gradient_norm_monitor_": "only_first_replica",
    # nnkit.optimizers' state (statistics, roots, bases, moments): written in the
    # optimizer's update from the all-reduced gradients, the same on every replica.
    "nnkit_optimizer_": "only_first_replica",
    # MetaSGD's inner learning rates: trainable, written by the optimizer after the
    # all-reduce (cross-replica context), so the aggregation is never used.
    "meta_sgd_rate_": "none",
    # KFAC's capture channels (its momenta, factors and curvature are nnkit_optimizer_
    # state): never written by the optimizer, which takes their gradients out of the
    # update (the statistics), the same on every replica.
    "kfac_": "only_first_replica",
    # nnkit.search.OneShotSupernet's shared weights: trainable model weights like
    # any layer's, written by the optimizer after the all-reduce (cross-replica
    # context), so the aggregation is never used.
    "supernet_": "none",
}
#: Rows of ``INTENDED_AGGREGATION`` for variables that a plain fit with every
#: callback does not create (they belong to a kind of model, or to KFAC, which
#: needs its model: tests/optimizers/test_kfac*.py trains it mirrored).
MODEL_VARIABLES = ("meta_sgd_rate_", "kfac_", "supernet_")


def intended_aggregation(name):
    """The aggregation ``INTENDED_AGGREGATION`` gives a variable name, or ``None``."""
    base = name.split(":")[0].rsplit("/", 1)[-1]
    matches = [agg for prefix, agg in INTENDED_AGGREGATION.items() if base.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


@dataclasses.dataclass
class Created:
    """A variable created during a run (its copy on each replica), and who asked for it."""

    components: list  # one tf.Variable per replica (one in all when not mirrored)
    site: str  # "path/to/file.py:function" of the first frame past the machinery
    nnkit_frame: str  # the innermost nnkit frame on the stack ("" when none)

    @property
    def by_nnkit(self):
        """Whether nnkit code itself asked for the variable (not a Keras layer inside nnkit's)."""
        return self.site.startswith("nnkit/")

    @property
    def name(self):
        return self.components[0].name

    @property
    def aggregation(self):
        """Keras's name for the aggregation: ``"none"``, ``"mean"``, ``"only_first_replica"``..."""
        return self.components[0].aggregation.name.lower()

    @property
    def distributed(self):
        return len(self.components) > 1

    @property
    def sync_on_read(self):
        return self.components[0].synchronization == tf.VariableSynchronization.ON_READ

    def replica_values(self):
        """The value on each replica."""
        return [np.asarray(v.numpy()) for v in self.components]


def _short(frame):
    path = frame.filename
    for root in ("/nnkit/", "/keras/src/", "/tests/"):
        if root in path:
            path = root.strip("/") + "/" + path.split(root, 1)[1]
            break
    return f"{path}:{frame.name}"


@contextlib.contextmanager
def record_variables():
    """Collect every variable created in the block, with its creation site.

    Every record holds the variable's copy on each replica (collected when the
    block ends), so its values can be read after the distributed variable is
    gone (the gradient monitor deletes its own at the end of ``fit``).
    """
    created = []

    def creator(next_creator, **kwargs):
        variable = next_creator(**kwargs)
        stack = traceback.extract_stack()[:-1]
        site = next((f for f in reversed(stack) if not _machinery(f)), None)
        nnkit_frame = next((f for f in reversed(stack) if "/nnkit/" in f.filename), None)
        created.append(
            Created(
                [variable],
                _short(site) if site else "?",
                _short(nnkit_frame) if nnkit_frame else "",
            )
        )
        return variable

    with tf.variable_creator_scope(creator):
        yield created
    # A strategy's creator may run before this one and ask it for each replica's
    # copy in turn ("w:0", then "w/replica_1:0", ...): group them by the first.
    grouped, primaries = [], {}
    for record in created:
        (variable,) = record.components
        if hasattr(variable, "values"):  # the distributed variable itself
            record.components = list(variable.values)
        match = re.fullmatch(r"(.*)/replica_\d+(:\d+)", variable.name)
        if match and match.group(1) + match.group(2) in primaries:
            primaries[match.group(1) + match.group(2)].components.append(variable)
            continue
        primaries[variable.name] = record
        grouped.append(record)
    created[:] = grouped


# -- training -------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """What one training run produced."""

    values: dict  # {name: np.ndarray}, the quantities compared across runs
    model: object
    created: list  # [Created]
    component: object


def _stable(name):
    """A name without Keras's automatic numbering (``sequential_3/dense_12`` → ``sequential/dense``).

    Two runs in one process number their models and layers differently.
    """
    return re.sub(r"_\d+(?=\W|_|$)", "", name)


def _named(prefix, variables):
    """``{prefix/i/path: value}``; the index keeps names unique once suffixes are gone."""
    return {f"{prefix}/{i}/{_stable(w.path)}": np.asarray(w) for i, w in enumerate(variables)}


def _scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _flat(prefix, value, out):
    """Flatten nested state (dicts, lists, numbers, arrays, None, str) into ``out``."""
    if isinstance(value, dict):
        for key in sorted(value):
            _flat(f"{prefix}/{key}", value[key], out)
    elif isinstance(value, (list, tuple)) and any(
        isinstance(v, (dict, list, tuple, np.ndarray)) for v in value
    ):
        for i, item in enumerate(value):
            _flat(f"{prefix}/{i}", item, out)
    elif value is None or isinstance(value, str):
        out[prefix] = np.array(_stable(repr(value)))
    elif hasattr(value, "value") and not isinstance(value, (numbers.Number, np.ndarray)):
        out[prefix] = np.array(repr(getattr(value, "value", value)))  # an enum
    else:
        array = np.asarray(value, dtype="float64" if _numeric(value) else None)
        out[prefix] = np.vectorize(_stable)(array) if array.dtype.kind == "U" else array


def _numeric(value):
    return isinstance(value, numbers.Number) or (
        isinstance(value, (list, tuple, np.ndarray))
        and all(isinstance(v, numbers.Number) for v in np.ravel(np.asarray(value, object)))
    )


def _small_model(inner, units=2):
    return keras.Sequential([keras.Input((WIDTH,)), *inner, keras.layers.Dense(units)])


def _setup(component, obj, shards):
    """``(model, compile kwargs, fit kwargs)`` for one component (inside the strategy scope)."""
    x = features()
    fit = {"x": x, "y": regression_targets(x), "epochs": EPOCHS}
    # SGD with momentum: Adam divides by the root of the second moment, which turns a
    # gradient that is zero up to rounding (e.g. a bias under a translation-invariant
    # loss) into a full-size step whose sign is the rounding noise.
    compile_kwargs = {"optimizer": keras.optimizers.SGD(0.05, momentum=0.5), "loss": "mse"}
    kind = component.kind
    if kind == "schedule":
        model = _small_model([keras.layers.Dense(8, activation="tanh")])
        compile_kwargs["optimizer"] = keras.optimizers.SGD(obj, momentum=0.5)
    elif kind == "callback":
        model = _small_model([keras.layers.Dense(8, activation="tanh")])
        from nnkit.schedules import CosineAnnealing

        steps = CALLBACK_EPOCHS * ROWS // GLOBAL_BATCH
        compile_kwargs["optimizer"] = keras.optimizers.SGD(CosineAnnealing(0.05, steps))
        fit.update(epochs=CALLBACK_EPOCHS, callbacks=[obj])
        if str(obj.get_config().get("monitor", "")).startswith("val_"):
            # Validation targets of the opposite sign: the better the fit, the worse
            # the validation loss, so it never improves after the first epoch and the
            # callbacks' decisions (stop, reduce) happen within the run and do not
            # hang on a difference near a threshold.
            xv = features(16, seed=5)
            fit["validation_data"] = (xv, -regression_targets(xv))
    elif kind == "layer":
        model = _small_model([obj])
    elif kind == "loss":
        units, y = loss_targets(component.key)
        model = _small_model([keras.layers.Dense(8, activation="tanh")], units)
        compile_kwargs["loss"] = training_loss(obj) if shards == 1 else per_shard(obj, shards)
        fit["y"] = y
    elif kind == "regularizer":
        model = _small_model([keras.layers.Dense(8, activation="tanh", kernel_regularizer=obj)])
    elif kind == "initializer":
        model = _small_model([keras.layers.Dense(8, activation="tanh", kernel_initializer=obj)])
    elif kind == "data_init":
        model = _small_model([keras.layers.Dense(8, activation="tanh")])
        obj(model, x[:32], seed=SEED)
    elif kind == "model":
        model = obj
    elif kind == "optimizer":
        model = _small_model([keras.layers.Dense(8, activation="tanh")])
        compile_kwargs["optimizer"] = obj
    elif kind == "meta":
        # A batch of GLOBAL_BATCH tasks per step; each replica adapts its share of them.
        model = obj
        tasks, y_query = meta_tasks()
        fit = {"x": tasks, "y": y_query, "epochs": EPOCHS}
    elif kind == "model_transform":
        model = nnkit.models.mlp(WIDTH, [8], output_units=2)
        obj(model)
    else:
        raise ValueError(f"no training for kind {kind!r} ({component.key})")
    return model, compile_kwargs, fit


def _local_paths(obj, tmp_path):
    """Point a callback's directories inside ``tmp_path`` (one directory per run)."""
    for attr in ("backup_dir", "log_dir", "directory"):
        if getattr(obj, attr, None):
            config = obj.get_config()
            config[attr] = str(tmp_path / attr)
            obj = type(obj).from_config(config)
    return obj


def is_stochastic(component):
    """Whether the component's example is a layer that draws random numbers in training."""
    return component.kind == "layer" and bool(seed_generators(component.make()))


def train(component, strategy, tmp_path, *, stochastic=False, shards=1):
    """Train with ``component`` on one device (``strategy=None``) or under ``strategy``.

    Stochastic layers are replaced by their deterministic variant unless
    ``stochastic``. ``shards > 1`` (one device, losses only) computes the loss
    on each of ``shards`` equal parts of every batch, as replicas do.
    """
    variant = not stochastic and is_stochastic(component)
    keras.utils.set_random_seed(SEED)
    with record_variables() as created:
        with _scope(strategy):
            obj = component.make()
            if variant:
                obj = deterministic(obj)
            if component.kind == "callback":
                obj = _local_paths(obj, tmp_path)
            model, compile_kwargs, fit = _setup(component, obj, shards)
            if type(obj).__name__ in NEEDS_BACKUP:
                backup = nnkit.callbacks.BackupAndRestore(str(tmp_path / "companion_backup"))
                fit["callbacks"] = [backup, *fit["callbacks"]]
            model.compile(**compile_kwargs, jit_compile=False)
        if strategy is not None:
            nnkit.distribute.synchronize_batch_norm(model)
        values = _named("initial", model.weights)
        history = model.fit(**fit, batch_size=GLOBAL_BATCH, shuffle=False, verbose=0).history
    values.update(_named("weights", model.weights))
    values.update(_named("optimizer", model.optimizer.variables))
    timed = WALL_CLOCK_LOGS.get(type(obj).__name__, ())
    for key, series in history.items():
        if key.removesuffix("_window") not in timed:
            values[f"history/{_stable(key)}"] = np.asarray(series, "float64")
    state = {}
    if hasattr(obj, "get_state"):
        state = obj.get_state()
        for name in WALL_CLOCK_STATE.get(type(obj).__name__, ()):
            state.pop(name, None)
    if hasattr(obj, "get_scale"):
        state = {"scale": obj.get_scale()}
    scaled = getattr(model.optimizer, "_learning_rate", None)
    if hasattr(scaled, "get_scale"):
        state["optimizer_scale"] = scaled.get_scale()
    _flat("state", state, values)
    return Run(values, model, created, obj)


# -- comparison -----------------------------------------------------------------


def deviations(expected, actual):
    """``{name: (max abs deviation, max relative deviation)}`` over the numeric values.

    Raises ``AssertionError`` when the two runs do not have the same quantities,
    shapes, or equal non-numeric values (enum names, messages).
    """
    assert sorted(expected) == sorted(actual), (
        f"different quantities: only single-device {sorted(set(expected) - set(actual))}, "
        f"only mirrored {sorted(set(actual) - set(expected))}"
    )
    found = {}
    for name, want in expected.items():
        got = actual[name]
        assert want.shape == got.shape, f"{name}: shape {got.shape}, expected {want.shape}"
        if want.dtype.kind not in "biuf":
            assert np.array_equal(want, got), f"{name}: {got!r}, expected {want!r}"
            continue
        want64, got64 = want.astype("float64"), got.astype("float64")
        same_nonfinite = np.array_equal(np.isfinite(want64), np.isfinite(got64))
        assert same_nonfinite, f"{name}: non-finite values differ: {got!r} vs {want!r}"
        finite = np.isfinite(want64)
        diff = np.abs(want64[finite] - got64[finite])
        scale = np.abs(want64[finite])
        found[name] = (
            float(diff.max(initial=0.0)),
            float((diff / np.maximum(scale, 1e-30)).max(initial=0.0)),
        )
    return found


def out_of_tolerance(expected, actual, rtol, atol):
    """``{name: (max abs, max relative deviation)}`` for values where some element has
    ``|actual - expected| > atol + rtol·|expected|`` (``np.testing.assert_allclose``'s rule).
    """
    found = deviations(expected, actual)
    bad = {}
    for name, deviation in found.items():
        want = expected[name].astype("float64")
        got = actual[name].astype("float64")
        finite = np.isfinite(want)
        if np.any(np.abs(got[finite] - want[finite]) > atol + rtol * np.abs(want[finite])):
            bad[name] = deviation
    return bad


def wrong_aggregation(created):
    """Variables nnkit itself created without their intended aggregation, or outside the
    strategy (not distributed), as readable strings."""
    wrong = []
    for record in created:
        if not record.by_nnkit:
            continue
        intended = intended_aggregation(record.name)
        if record.aggregation != intended or not record.distributed:
            wrong.append(
                f"{record.name} created at {record.site}: aggregation {record.aggregation!r}, "
                f"intended {intended!r}, distributed={record.distributed}"
            )
    return wrong


def out_of_sync(created):
    """Names of the mirrored variables whose replicas hold different values.

    Sync-on-read variables (Keras's metric accumulators) are per replica by
    design and summed when read, so they are left out.
    """
    return sorted(
        f"{c.name} (aggregation {c.aggregation!r}, created at {c.site})"
        for c in created
        if not c.sync_on_read
        and len(values := c.replica_values()) > 1
        and any(not np.array_equal(values[0], v) for v in values[1:])
    )

"""The bad-input conformance harness: every public nnkit name against a table of wrong values.

Discovery: every name in the ``__all__`` of every subpackage of
``nnkit.SUBPACKAGES``. Each one that a user calls or constructs has a row in
``BASELINES``: a valid call (keyword arguments). ``RESULT_TYPES`` are the
value objects nnkit returns (reports, decisions), which users read but do not
construct, and ``ABSTRACT`` the bases users subclass; ``tests/test_bad_input.py``
fails when a public name is in none of the three, so a new public name is
fuzzed as soon as it is exported.

Probes: every parameter of the signature, one at a time, replaced in the
valid call by each value of the table for its kind (the kind comes from the
parameter's default, else from the valid call's value):

* *wrong* values (``None`` where ``None`` is not the default, bools where a
  number or string is expected, numbers where a bool or string is expected,
  strings, lists and dicts where a scalar is expected, NaN and ±inf,
  ``10**400``, non-integral or huge floats for integers): they must raise a
  ``ValueError``/``TypeError``, raised in nnkit's code, whose message names
  the argument and echoes the received value (*clear*); any other exception,
  or one without the name or the value, is *unclear*; no exception at all is
  *silent*;
* *range* values (``0``, ``-1``, ``1e308``, ``""``, an unknown option name):
  valid for some parameters (``min_delta=0``, ``name=""``), wrong for others.
  Raising is judged as above; accepting is fine only if the result then
  works: the *exercise* of its kind (a schedule evaluated at steps 0 … 10⁶ is
  finite, a loss or layer called on small tensors is finite, an optimizer
  applies three steps, a callback runs a two-epoch ``fit``, a model predicts
  or fits, a function's numeric result is finite). An accepted value whose
  exercise fails or gives non-finite numbers is *silent* (the failure comes
  late, far from the argument);
* *valid* values: the valid call's own number as a numpy scalar
  (``np.float32``/``np.int64``) and as a 0-d array, which must be accepted
  wherever the Python number is (else *rejected*).

Every call runs under a time limit (``TIME_LIMIT`` seconds, ``SIGALRM``): a
call that runs past it is a *hang*.

``VALID`` lists the (name, parameter) pairs for which a value of the wrong
table is valid by design, each with its reason.
"""

import contextlib
import gc
import importlib
import inspect
import math
import os
import signal
import tempfile
import time

import numpy as np

import nnkit

TIME_LIMIT = 30.0  # seconds per call (and per exercise)

WRONG_COMMON = {"None": None, "dict": {"a": 1}}
WRONG = {
    "number": {
        "True": True, "str": "0.5", "list": [0.5], "nan": math.nan, "inf": math.inf,
        "-inf": -math.inf, "10**400": 10**400,
    },
    "int": {
        "True": True, "str": "3", "list": [3], "nan": math.nan, "inf": math.inf,
        "0.5": 0.5, "2.5": 2.5, "1e308": 1e308, "10**400": 10**400,
    },
    "bool": {"1": 1, "0": 0, "str": "True", "0.5": 0.5, "list": []},
    "str": {"1": 1, "True": True, "list": ["a"]},
    "object": {"True": True, "1.5": 1.5},
}  # fmt: skip


def _scalar_tensor(value):
    """A 0-d tensor of ``value`` (TensorFlow's; a 0-d numpy array on other backends)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.constant(value)
    return np.asarray(value)


# Issue 22: a scalar tensor where a string is expected failed inside TensorFlow.
WRONG["str"]["scalar tensor"] = _scalar_tensor("no-such-option")


class NotData:
    """An object that is no array, tensor, dataset or sequence."""

    def __repr__(self):
        return "<NotData>"


# Arrays, tensors and datasets: scalars and dicts can be valid data (a
# broadcast label, named inputs), so their wrong values are these.
WRONG["data"] = {"str": "no-such-option", "object": NotData()}
DATA = {
    "x", "y", "y_true", "y_pred", "batch", "grads", "before", "after", "variables",
    "validation_data", "batch_norm_data", "grad_norms", "update_ratios", "weight_norms",
    "global_norms", "nonfinite", "group_names",
}  # fmt: skip
# Model inputs cut into batches (issue 22): a number, a list of numbers or a scalar
# tensor is no batch of rows, whatever scalars mean for labels.
WRONG["batches"] = {
    **WRONG["data"], "number": 1.0, "nan": math.nan, "numbers": [1, 2], "dict of numbers": {"a": 1},
    "scalar tensor": _scalar_tensor(1.0),
}  # fmt: skip
# A list argument (widths, milestones, devices, callbacks...): a scalar tensor is no list.
WRONG["list"] = {**WRONG["object"], "scalar tensor": _scalar_tensor(3)}
KINDS = {
    ("callbacks.StochasticWeightAveraging", "batch_norm_data"): "batches",
    ("callbacks.recompute_batch_norm", "x"): "batches",
    ("initializers.lsuv", "batch"): "batches",
    ("layers.mc_predict", "x"): "batches",
    ("tuning.rerun_best", "x"): "batches",
    ("tuning.tune", "x"): "batches",
    ("diagnostics.diagnose", "steps"): "data",
    ("optimizers.Shampoo", "weight_decay"): "number",
    ("optimizers.Shampoo", "exponent"): "number",
    ("optimizers.KFAC", "max_update_norm"): "number",
}
RANGE = {
    "number": {"0": 0, "-1": -1, "1e308": 1e308},
    "int": {"0": 0, "-1": -1},
    "bool": {},
    "str": {"empty": "", "unknown": "no-such-option"},
    "object": {"unknown": "no-such-option"},
    "data": {},
    "batches": {},
    "list": {"unknown": "no-such-option"},
}

# (name, parameter) -> {probe label: reason it is valid by design}
VALID = {}


def _valid(names, params, labels, reason):
    for name in names.split():
        for param in params.split():
            VALID.setdefault((name, param), {}).update(dict.fromkeys(labels.split(), reason))


# (name, parameter) -> reason: an accepted value is checked only when the
# training run gives it meaning (a monitored key exists only in the epoch
# logs); the exercise must then raise a clear ValueError naming the value.
LATE = {}
for _name in ("callbacks.EarlyStopping", "callbacks.ReduceLROnPlateau"):
    LATE[(_name, "monitor")] = "the logged keys are known at the first epoch's end"
LATE[("callbacks.ModelCheckpoint", "monitor")] = "the logged keys are known at the first save"
LATE[("losses.SparseCategoricalCrossentropy", "axis")] = (
    "any axis can be the class axis; it is checked against the data at the call"
)

_LOSSES = (
    "losses.ContrastiveLoss losses.SmoothL1 losses.SparseCategoricalCrossentropy losses.TripletLoss"
)
_valid(_LOSSES, "name", "None", "Keras names the loss after its class (keras.losses.Loss)")
_valid(_LOSSES, "dtype", "None", "the default: Keras's floatx")
_valid(_LOSSES, "reduction", "None", "Keras's reduction=None: no reduction, as 'none'")
_valid(
    "diagnostics.DiagnosisRules",
    "exploding_threshold jump_factor update_ratio_band",
    "None",
    "None turns the rule off (documented)",
)
_valid(
    "layers.DenseBlock layers.ResidualBlock models.mlp initializers.for_activation",
    "activation",
    "None",
    "None is the linear activation, as in keras.layers.Dense",
)
_valid(
    "models.mlp distribute.mlp_layout_map",
    "output_units",
    "None",
    "None: no output layer, the last block is the output (documented)",
)
_valid("tuning.MLPHyperModel", "patience", "None", "None: no early stopping (documented)")
_valid("optimizers.KFAC", "kl_clip", "None", "None: no KL clipping (documented)")
_valid("optimizers.KFAC", "name", "None", "Keras names the optimizer")
_valid("optimizers.SOAP", "weight_decay", "None", "None: no weight decay (documented)")
_valid("schedules.Scaled", "schedule", "1.5", "a float is a constant rate (documented)")
_valid("callbacks.BackupAndRestore", "save_freq", "1", "an integer save_freq saves every n batches")
_valid("callbacks.ModelCheckpoint", "save_freq", "1", "an integer save_freq saves every n batches")
_valid("distribute.choose_strategy", "tf_config", "dict", "TF_CONFIG as a parsed dict")
_valid("distribute.choose_strategy", "devices", "None", "None: no devices (documented)")
_valid("distribute.input_pipeline", "drop_remainder", "True", "drop_remainder is a bool or None")
_valid("distribute.input_pipeline", "prefetch", "1", "an integer prefetch buffer size")
_valid("distribute.input_pipeline", "cache", "str", "a file name caches to disk, as Dataset.cache")
_valid("search.make_searcher search.search_architectures", "max_latency_ms", "1.5",
       "a latency limit in ms may be fractional")  # fmt: skip

RESULT_TYPES = {
    "callbacks.Decision": "returned by a callback's decide(); read, not constructed",
    "callbacks.Reason": "an enum of stop reasons",
    "callbacks.StopReason": "an enum of stop reasons",
    "callbacks.Preempted": "an exception fit raises; caught, not constructed",
    "callbacks.PREEMPTED_EXIT_STATUS": "a constant (the exit status 75), not called",
    "diagnostics.GradientNorms": "returned by gradient_norms()",
    "diagnostics.GradientReport": "returned by GradientNormMonitor.report()",
    "diagnostics.VariableGroups": "returned by group_variables()",
    "distribute.ReadinessReport": "returned by distribute.check()",
    "distribute.LayoutReport": "returned by distribute.plan_layout()",
    "distribute.VariablePlan": "returned inside plan_layout()'s LayoutReport",
    "distribute.MemoryEstimate": "returned by distribute.estimate_memory()",
    "distribute.LayoutChoice": "returned by distribute.choose_layout()",
    "initializers.LSUVLayerResult": "returned inside lsuv()'s report",
    "initializers.LSUVReport": "returned by lsuv()",
    "tuning.SensitivityReport": "returned by sensitivity_report()",
    "tuning.LRFinderResult": "returned by lr_find()",
}
ABSTRACT = {
    "callbacks.StatefulCallback": "a base class with no arguments",
    "callbacks.MonitorCallback": "an abstract base; its arguments are fuzzed through "
    "EarlyStopping, ReduceLROnPlateau and MedianStopping",
    "schedules.Schedule": "an abstract base with no arguments",
    "meta.TaskSampler": "an abstract base with no arguments",
    "meta.MetaLearner": "the shared base of MAML, MetaSGD, ANIL and Reptile (fuzzed through them)",
}


# Names whose valid call needs another backend: on this one they raise a
# clear error naming the backend (tested in tests/distribute).
BACKEND_ONLY = {
    "distribute.model_parallel": "jax",
    "distribute.verify_layout": "jax",
    "distribute.plan_layout": "jax",
    "distribute.check_layout": "jax",
    "distribute.estimate_memory": "jax",
    "distribute.choose_layout": "jax",
    "distribute.Remat": "jax",
    "distribute.shard_optimizer_state": "jax",
}


class Hang(Exception):
    pass


def _in_finalizer(frame):
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def time_limit(seconds=None):
    seconds = TIME_LIMIT if seconds is None else seconds

    # Garbage collection of earlier tests' traced functions can land inside
    # this call: its time does not count, and a finalizer (``__del__``) cannot
    # propagate an exception (Python would report it as unraisable and the call
    # would go on), so the alarm is postponed in both cases.
    collecting = {"since": None, "seconds": 0.0}

    def _clock(phase, info):
        if phase == "start":
            collecting["since"] = time.perf_counter()
        elif collecting["since"] is not None:
            collecting["seconds"] += time.perf_counter() - collecting["since"]
            collecting["since"] = None

    def _raise(signum, frame):
        if collecting["seconds"] > 0 or _in_finalizer(frame):
            signal.setitimer(signal.ITIMER_REAL, max(collecting["seconds"], 0.5))
            collecting["seconds"] = 0.0
            return
        raise Hang(f"no answer within {seconds} s")

    gc.callbacks.append(_clock)
    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.callbacks.remove(_clock)


def public_names():
    """``"subpackage.Name"`` for every name in every subpackage's ``__all__``."""
    names = []
    for sub in nnkit.SUBPACKAGES:
        module = importlib.import_module(f"nnkit.{sub}")
        names += [f"{sub}.{name}" for name in module.__all__]
    return names


def resolve(key):
    sub, name = key.split(".")
    return getattr(importlib.import_module(f"nnkit.{sub}"), name)


# -- fixtures of the valid calls ------------------------------------------------


class Context:
    """Small models, arrays and directories for the valid calls (fresh per call)."""

    def __init__(self, root):
        self.root = root
        self.rng = np.random.default_rng(0)
        self._count = 0

    def directory(self, name="dir"):
        self._count += 1
        path = os.path.join(self.root, f"{name}{self._count}")
        return path

    def x(self, n=16, d=4):
        return np.random.default_rng(0).normal(size=(n, d)).astype("float32")

    def y(self, n=16):
        return np.random.default_rng(1).normal(size=(n, 1)).astype("float32")

    def model(self, compiled=False, batch_norm=False):
        import keras

        layers = [keras.Input((4,)), keras.layers.Dense(6, activation="tanh", name="body")]
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(name="bn"))
        layers.append(keras.layers.Dense(1, name="head"))
        model = keras.Sequential(layers)
        if compiled:
            model.compile(optimizer="sgd", loss="mse")
        return model

    def study(self):
        from nnkit.tuning._synthetic import write_random_study

        directory = self.directory("study")
        specs = [
            {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "sampling": "log"},
            {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5, "default": 0.25},
        ]

        def bowl(v, rng):
            return (math.log10(v["learning_rate"]) + 2.5) ** 2 + 0.3 * v["dropout"]

        write_random_study(directory, specs, bowl, n_trials=12, seed=0)
        return directory

    def space(self):
        from nnkit.tuning import SearchSpace

        return SearchSpace().fixed(depth=1, width=4).drop("residual", "normalization")


def _config_of(example_key):
    """Valid keyword arguments from the example instance's ``get_config()``."""

    def build(ctx):
        from tests.examples import EXAMPLES

        instance = EXAMPLES[example_key]()
        config = instance.get_config()
        parameters = inspect.signature(type(instance)).parameters
        return {k: v for k, v in config.items() if k in parameters}

    return build


def _schedule_config(key):
    import keras

    inner = _config_of(key)

    def build(ctx):
        config = inner(ctx)
        return {
            k: keras.saving.deserialize_keras_object(v) if isinstance(v, dict) and "class_name" in v
            else [keras.saving.deserialize_keras_object(s) for s in v]
            if isinstance(v, list) and v and isinstance(v[0], dict) else v
            for k, v in config.items()
        }  # fmt: skip

    return build


def _optimizer(ctx):
    import keras

    return keras.optimizers.SGD(0.1)


def _tasks(ctx):
    from nnkit.meta import FewShotClassification

    x = np.random.default_rng(0).normal(size=(60, 4)).astype("float32")
    y = np.repeat(np.arange(6), 10)
    return FewShotClassification(x, y, ways=3, shots=2, queries=2)


def _meta_model(ctx):
    import keras

    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="tanh", name="body"),
         keras.layers.Dense(3, name="head")]
    )  # fmt: skip


def _mc_model(ctx):
    import keras

    from nnkit.layers import MCDropout

    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(6), MCDropout(0.2),
                             keras.layers.Dense(1)])  # fmt: skip


def _mesh(ctx):
    from nnkit.distribute import device_mesh

    return device_mesh()


BASELINES = {
    # callbacks
    "callbacks.BackupAndRestore": lambda c: {"backup_dir": c.directory("backup"), "save_freq": "epoch",
                                             "double_checkpoint": False, "delete_checkpoint": True},
    "callbacks.EarlyStopping": lambda c: {"monitor": "val_loss", "min_delta": 0.001, "patience": 1,
                                          "verbose": 0, "mode": "min", "baseline": 10.0,
                                          "restore_best_weights": True, "start_from_epoch": 0,
                                          "divergence_threshold": 1e6, "smoothing": 0.5},
    "callbacks.GradientNormMonitor": lambda c: {"sample_every": 2, "by": "layer", "on_nonfinite": "warn",
                                                "log_dir": c.directory("grads"), "verbose": 0},
    "callbacks.LearningRateMonitor": lambda c: {"log_name": "lr", "sample_every": 2,
                                                "log_dir": c.directory("lr")},
    "callbacks.ModelCheckpoint": lambda c: {"filepath": os.path.join(c.directory("ckpt"), "m-{epoch}.keras"),
                                            "monitor": "val_loss", "verbose": 0, "save_best_only": True,
                                            "mode": "min", "initial_value_threshold": 10.0, "keep_last": 2},
    "callbacks.ReduceLROnPlateau": lambda c: {"monitor": "val_loss", "factor": 0.5, "patience": 1,
                                              "verbose": 0, "mode": "min", "min_delta": 0.001,
                                              "cooldown": 1, "min_lr": 1e-5},
    "callbacks.StochasticWeightAveraging": lambda c: {"start_epoch": 1, "period": 1, "learning_rate": 0.05,
                                                      "batch_norm_data": None, "batch_size": 8},
    "callbacks.TimeLimit": lambda c: {"max_duration": 3600.0, "safety_factor": 1.25, "boundary": "epoch",
                                      "verbose": 0},
    "callbacks.ThroughputMonitor": lambda c: {"batch_size": 8, "tokens_per_sample": 4, "window": 3,
                                              "flops_per_step": 1e6, "peak_flops": 1e12},
    "callbacks.ExceptionSave": lambda c: {"verbose": 0},
    "callbacks.PreemptionSave": lambda c: {"signals": ["SIGTERM"], "grace_period": 30.0,
                                           "exit_status": 75, "verbose": 0},
    "callbacks.recompute_batch_norm": lambda c: {"model": c.model(batch_norm=True), "x": c.x(),
                                                 "batch_size": 8, "steps": 2},
    # diagnostics
    "diagnostics.DiagnosisRules": lambda c: {"vanishing_threshold": 1e-6, "relative_threshold": 1e-3,
                                             "window": 5, "exploding_threshold": 1e3, "jump_factor": 10.0,
                                             "update_ratio_band": 100.0},
    "diagnostics.describe_layers": lambda c: {"model": c.model()},
    "diagnostics.diagnose": lambda c: {"steps": [0, 1, 2], "group_names": ["a", "b"],
                                       "grad_norms": [[1.0, 0.5], [1.1, 0.4], [0.9, 0.6]]},
    "diagnostics.first_nonfinite_group": lambda c: {"nonfinite": [False, True]},
    "diagnostics.gradient_norms": lambda c: (lambda m: {
        "grads": [np.ones(v.shape, "float32") for v in m.trainable_variables],
        "variables": m.trainable_variables})(c.model()),
    "diagnostics.group_variables": lambda c: {"variables": c.model().trainable_variables, "by": "layer"},
    "diagnostics.update_ratios": lambda c: (lambda m: {
        "before": [np.ones(v.shape, "float32") for v in m.trainable_variables],
        "after": [np.full(v.shape, 1.1, "float32") for v in m.trainable_variables],
        "groups": __import__("nnkit.diagnostics").diagnostics.group_variables(m.trainable_variables),
        "epsilon": 1e-12})(c.model()),
    "diagnostics.weight_norms": lambda c: {"variables": c.model().trainable_variables},
    # distribute
    "distribute.check": lambda c: {"model": c.model(compiled=True), "raise_on_error": False},
    "distribute.choose_strategy": lambda c: {"kind": "auto", "devices": (), "tpu_connects": False},
    "distribute.clip_after_aggregation": lambda c: {"optimizer": _optimizer(c), "global_clipnorm": 1.0},
    "distribute.device_mesh": lambda c: {"batch_axis": "batch", "model_axis": "model"},
    "distribute.global_batch_size": lambda c: {"per_replica_batch": 8},
    "distribute.input_pipeline": lambda c: {"x": c.x(), "y": c.y(), "global_batch_size": 8,
                                            "shuffle": True, "seed": 1, "cache": False},
    "distribute.is_chief": lambda c: {},
    "distribute.mlp_layout_map": lambda c: {"device_mesh": _mesh(c), "input_dim": 4, "widths": [8],
                                            "output_units": 1, "min_size": 1},
    "distribute.per_replica_batch_size": lambda c: {"global_batch": 8},
    "distribute.remove_clip_after_aggregation": lambda c: {"optimizer": _optimizer(c)},
    "distribute.remove_worker_directory": lambda c: {"directory": c.directory("worker")},
    "distribute.scale_learning_rate": lambda c: {"base_lr": 0.1, "base_batch_size": 32,
                                                 "global_batch_size": 64, "rule": "linear",
                                                 "warmup_steps": 0},
    "distribute.strategy": lambda c: {"kind": "auto", "verbose": 0},
    "distribute.synchronize_batch_norm": lambda c: {"model": c.model(batch_norm=True)},
    "distribute.worker_directory": lambda c: {"directory": c.directory("worker")},
    # initializers
    "initializers.for_activation": lambda c: {"activation": "relu", "seed": 1},
    "initializers.lsuv": lambda c: {"model": c.model(), "batch": c.x(), "tolerance": 0.1,
                                    "max_iterations": 3, "orthogonal": True, "seed": 1},
    # layers
    "layers.DenseBlock": _config_of("layers.DenseBlock"),
    "layers.DropPath": lambda c: {"rate": 0.2, "seed": 1},
    "layers.MCDropout": lambda c: {"rate": 0.2, "seed": 1},
    "layers.ResidualBlock": _config_of("layers.ResidualBlock"),
    "layers.mc_predict": lambda c: {"model": _mc_model(c), "x": c.x(), "passes": 3, "batch_size": 8,
                                    "seed": 1},
    # losses
    "losses.ContrastiveLoss": lambda c: {"margin": 1.0, "reduction": "sum_over_batch_size",
                                         "name": "contrastive_loss", "dtype": None},
    "losses.SmoothL1": lambda c: {"beta": 1.0, "reduction": "sum_over_batch_size", "name": "smooth_l1",
                                  "dtype": None},
    "losses.SparseCategoricalCrossentropy": lambda c: {"from_logits": True, "label_smoothing": 0.1,
                                                       "axis": -1, "ignore_class": None,
                                                       "reduction": "sum_over_batch_size",
                                                       "name": "scce", "dtype": None},
    "losses.TripletLoss": lambda c: {"margin": 1.0, "mining": "semi_hard", "distance": "euclidean",
                                     "soft": False, "reduction": "sum_over_batch_size",
                                     "name": "triplet_loss", "dtype": None},
    "losses.contrastive_loss": lambda c: {"y_true": np.array([0.0, 1.0, 1.0, 0.0], "float32"),
                                          "y_pred": np.array([0.2, 1.5, 0.3, 2.0], "float32"),
                                          "margin": 1.0},
    "losses.smooth_l1": lambda c: {"y_true": c.y(4), "y_pred": c.y(4) + 0.5, "beta": 1.0},
    "losses.sparse_categorical_crossentropy": lambda c: {
        "y_true": np.array([0, 1, 2, 1]), "y_pred": c.x(4, 3), "from_logits": True,
        "label_smoothing": 0.1, "axis": -1, "ignore_class": None},
    "losses.triplet_loss": lambda c: {"y_true": np.array([0, 0, 1, 1, 2, 2]), "y_pred": c.x(6, 3),
                                      "margin": 1.0, "mining": "semi_hard", "distance": "euclidean",
                                      "soft": False},
    # meta
    "meta.ANIL": lambda c: {"model": _meta_model(c), "head": "head", "inner_learning_rate": 0.01,
                            "inner_steps": 1, "first_order": False, "transductive": True},
    "meta.FewShotClassification": lambda c: {"x": c.x(60), "y": np.repeat(np.arange(6), 10), "ways": 3,
                                             "shots": 2, "queries": 2},
    "meta.MAML": lambda c: {"model": _meta_model(c), "inner_learning_rate": 0.01, "inner_steps": 1,
                            "first_order": False, "transductive": True},
    "meta.MetaSGD": lambda c: {"model": _meta_model(c), "inner_learning_rate": 0.01, "inner_steps": 1,
                               "first_order": False, "transductive": True, "rate_shape": "element"},
    "meta.RegressionFamily": lambda c: {
        "parameters": lambda rng, n: rng.normal(size=(n, 1)),
        "function": lambda slope, x: slope[:, None, :] * x,
        "inputs": lambda rng, n, points: rng.uniform(-1, 1, size=(n, points, 1)),
        "shots": 4, "queries": 4},
    "meta.Reptile": lambda c: {"model": _meta_model(c), "inner_learning_rate": 0.01, "inner_steps": 2,
                               "transductive": True},
    "meta.TaskBatches": lambda c: {"sampler": _tasks(c), "tasks_per_batch": 2, "steps_per_epoch": 2,
                                   "seed": 0},
    "meta.digits_tasks": lambda c: {"split": "train", "ways": 3, "shots": 1, "queries": 2,
                                    "rotations": (0,), "test_digits": (5, 6, 7, 8, 9)},
    "meta.sinusoid_family": lambda c: {"shots": 5, "queries": 5, "amplitude": (0.1, 5.0),
                                       "phase": (0.0, 3.14), "x_range": (-5.0, 5.0)},
    # models
    "models.MixUp": lambda c: {"model": c.model(), "alpha": 0.2, "mode": "mixup", "seed": 1},
    "models.SharpnessAwareMinimization": lambda c: {"model": c.model(), "rho": 0.05, "adaptive": False,
                                                    "num_batch_splits": 1},
    "models.mlp": lambda c: {"input_dim": 4, "widths": [6], "activation": "relu", "dropout": 0.1,
                             "drop_path": 0.0, "output_units": 1, "name": "net"},
    # optimizers
    "optimizers.KFAC": _config_of("optimizers.KFAC"),
    "optimizers.SOAP": _config_of("optimizers.SOAP"),
    "optimizers.Shampoo": _config_of("optimizers.Shampoo"),
    # regularizers
    "regularizers.L1": lambda c: {"l1": 0.01},
    "regularizers.L2": lambda c: {"l2": 0.01},
    "regularizers.WeightDecay": lambda c: {"weight_decay": 0.01},
    "regularizers.apply_regularization": lambda c: {"model": c.model(),
                                                    "regularizer": __import__("keras").regularizers.L2(0.01),
                                                    "overwrite": False},
    # schedules
    "schedules.Constant": lambda c: {"learning_rate": 0.05},
    "schedules.CosineAnnealing": _config_of("schedules.CosineAnnealing"),
    "schedules.Cyclical": _config_of("schedules.Cyclical"),
    "schedules.EpochSchedule": _schedule_config("schedules.EpochSchedule"),
    "schedules.JoinSchedules": _schedule_config("schedules.JoinSchedules"),
    "schedules.MultiStepDecay": _config_of("schedules.MultiStepDecay"),
    "schedules.OneCycle": _config_of("schedules.OneCycle"),
    "schedules.Scaled": _schedule_config("schedules.Scaled"),
    "schedules.StepDecay": _config_of("schedules.StepDecay"),
    "schedules.Warmup": _schedule_config("schedules.Warmup"),
    # tuning
    "tuning.MLPHyperModel": lambda c: {"input_dim": 4, "output_units": 1, "space": c.space(),
                                       "loss": "mse", "epochs": 2, "train_size": 16, "patience": 1},
    "tuning.LearningRateRangeTest": _config_of("tuning.LearningRateRangeTest"),
    "tuning.lr_find": lambda c: {"model": c.model(compiled=True), "x": c.x(64), "y": c.y(64),
                                 "batch_size": 8, "steps": 5, "learning_rates": (1e-4, 1.0),
                                 "sweep": "exponential", "stop_factor": 4.0, "seed": 0},
    "tuning.MedianStopping": lambda c: {"monitor": "val_loss", "min_trials": 2, "warmup_epochs": 1,
                                        "mode": "min", "directory": c.study(), "verbose": 0},
    "tuning.SearchSpace": lambda c: {},
    "tuning.rerun_best": lambda c: {"study_dir": c.study(), "build": _rerun_build, "x": c.x(),
                                    "y": c.y(), "seeds": (0, 1, 2), "epochs": 1, "verbose": 0,
                                    "validation_data": (c.x(8), c.y(8))},
    "tuning.sensitivity_report": lambda c: {"study_dir": c.study(), "method": "fanova",
                                            "n_bootstrap": 2, "seed": 0, "plots": False},
    "tuning.tune": lambda c: {"build_or_space": c.space(), "x": c.x(), "y": c.y(),
                              "validation_data": (c.x(8), c.y(8)), "directory": c.directory("tune"),
                              "tuner": "random", "max_trials": 1, "epochs": 1, "seed": 0,
                              "executions_per_trial": 1, "objective": "val_loss",
                              "max_consecutive_failed_trials": 1, "overwrite": False, "verbose": 0},
}  # fmt: skip


def _rerun_build(hp):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(hp.get("learning_rate")), loss="mse")
    return model


def _layout(ctx):
    from nnkit.distribute import mlp_layout_map

    return mlp_layout_map(_mesh(ctx), 4, [8], min_size=1)


def _placed(ctx):
    """A model built under an empty layout map (JAX only): every variable where it says."""
    import keras

    from nnkit.distribute import model_parallel

    layout_map = keras.distribution.LayoutMap(_mesh(ctx))
    with model_parallel(layout_map).scope():
        model = ctx.model()
    return {"model": model, "layout_map": layout_map}


def _named_build():
    """The baseline model under a fixed name: every build has the same variable paths."""
    import keras

    layers = [keras.Input((4,)), keras.layers.Dense(1, name="head")]
    return keras.Sequential(layers, name="net")


def _keras_sgd(c):
    import keras

    return keras.optimizers.SGD(0.1)


BASELINES.update({
    "optimizers.SGD": lambda c: {"learning_rate": 0.1, "momentum": 0.9},
    "optimizers.Adam": lambda c: {"learning_rate": 1e-3},
    "schedules.OneCycleMomentum": lambda c: {"total_steps": 100},
    "distribute.accumulate_gradients": lambda c: {"optimizer": _keras_sgd(c), "steps": 2},
    "distribute.remove_accumulation_patch": lambda c: {"optimizer": _keras_sgd(c)},
    "distribute.fix_multi_worker_fit": lambda c: {},
    "distribute.multi_worker_fit_is_broken": lambda c: {},
    "distribute.remove_multi_worker_fit_fix": lambda c: {},
    "distribute.model_parallel": lambda c: {"layout_map": _layout(c), "batch_axis": "batch"},
    "distribute.verify_layout": lambda c: {"model": c.model(), "layout_map": _layout(c)},
    "distribute.plan_layout": lambda c: {"model": c.model(), "mesh": _mesh(c), "strategy": "fsdp_tp",
                                         "batch_axis": "batch", "model_axis": "model"},
    "distribute.estimate_memory": lambda c: {"build_fn": c.model, "layout_map": _layout(c),
                                             "batch": (c.x(), c.y()), "optimizer": "adam",
                                             "loss": "mse", "batch_axis": "batch"},
    "distribute.check_layout": lambda c: {**_placed(c), "max_replicated": 0.02},
    "distribute.choose_layout": lambda c: {"build_fn": _named_build, "devices": 1, "memory_budget": 2**30,
                                           "batch": (c.x(), c.y()), "optimizer": "adam",
                                           "loss": "mse", "strategies": ["dp"],
                                           "batch_axis": "batch", "model_axis": "model"},
    "distribute.Remat": lambda c: {"layer": c.model(), "policy": "save_names", "names": ["a"]},
    "distribute.shard_optimizer_state": lambda c: {"optimizer": _keras_sgd(c),
                                                   "layout_map": _layout(c)},
})  # fmt: skip


def _search_space(c):
    from nnkit.search import conv1d_space

    return conv1d_space(
        stages=(1,),
        channels=(4, 8),
        kernels=(3,),
        downsample=("max",),
        residual=(False,),
        head=("avg",),
    )


def _search_table(c):
    from nnkit.search import TabularBenchmark

    space = _search_space(c)
    rows = [
        {
            "arch": arch,
            "val_accuracy": [[0.5 + 0.1 * i, 0.6 + 0.1 * i]],
            "params": 1,
            "seconds_per_epoch": 1.0,
        }
        for i, arch in enumerate(space.architectures())
    ]
    return TabularBenchmark(rows, space)


def _search_searcher(c):
    from nnkit.search import make_searcher

    return make_searcher("asha", _search_space(c), seed=0, max_epochs=3)


def _search_build(arch, input_shape, num_classes):
    return None


def _search_cost(arch):
    return {"params": 1, "flops": 1, "latency_ms": 0.1}


BASELINES.update({
    "search.Choice": lambda c: {"name": "width", "values": [4, 8]},
    "search.ArchitectureSpace": lambda c: {"choices": list(_search_space(c).choices),
                                           "build": _search_build, "name": "space"},
    "search.TabularBenchmark": lambda c: {"rows": [{"arch": {"stages": 1}, "val_accuracy": [[0.5]]}],
                                          "space": _search_space(c)},
    "search.stage_choices": lambda c: {"stages": [1, 2], "per_stage": {"width": [4, 8]}},
    "search.residual_mlp_space": lambda c: {},
    "search.conv1d_space": lambda c: {},
    "search.count_flops": lambda c: {"model": c.model()},
    "search.pareto_front": lambda c: {"accuracy": [0.9, 0.8], "cost": [2.0, 1.0]},
    "search.conv2d_space": lambda c: {},
    "search.measure_cost": lambda c: {"model": c.model(), "latency": True, "batch_size": 4},
    "search.measure_latency": lambda c: {"model": c.model(), "batch_size": 4, "repeats": 2,
                                         "warmup": 1, "clock": None},
    "search.plot_pareto": lambda c: {"accuracy": [0.9, 0.8], "cost": [2.0, 1.0],
                                     "path": c.directory("pareto") + "/front.png",
                                     "cost_name": "params", "labels": None, "title": None},
    "search.make_searcher": lambda c: {"searcher": "random", "space": _search_space(c), "seed": 0,
                                       "max_epochs": 2, "cost_fn": _search_cost},
    "search.simulate": lambda c: {"benchmark": _search_table(c), "searcher": "random",
                                  "budget": 2.0, "seed": 0},
    "search.evaluations_to_reach": lambda c: {"history": [{"epochs": 2, "mean": 0.5, "spent": 1.0}],
                                              "target": 0.5, "full_epochs": 2},
    "search.AsyncSearch": lambda c: {"searcher": _search_searcher(c), "journal": None},
    "search.OneShotSupernet": lambda c: {"space": _search_space(c), "input_shape": (8,),
                                         "num_classes": 3, "seed": 0},
    "search.search_architectures": lambda c: {"space": _search_space(c), "x": c.x(),
                                              "y": np.zeros(len(c.x()), "int32"),
                                              "validation_data": (c.x(8), np.zeros(8, "int32")),
                                              "directory": c.directory("search"),
                                              "searcher": "random", "max_trials": 1, "epochs": 1,
                                              "seed": 0},
})  # fmt: skip


# -- exercises: does an accepted value work? ------------------------------------


class Broken(Exception):
    """An accepted value whose result does not work (raised by an exercise)."""


def _finite(values, what):
    array = np.asarray(values, dtype="float64")
    if not np.all(np.isfinite(array)):
        raise Broken(f"{what} is not finite: {array.ravel()[:5]}")


def _fit(model, callbacks=(), epochs=2, loss="mse", optimizer="sgd"):
    import keras

    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = (
        np.random.default_rng(1)
        .normal(size=(16, model.outputs[0].shape[-1] if getattr(model, "outputs", None) else 1))
        .astype("float32")
    )
    if not model.compiled:
        model.compile(optimizer=keras.optimizers.get(optimizer), loss=loss)
    history = model.fit(x, y, batch_size=8, epochs=epochs, validation_data=(x, y),
                        callbacks=list(callbacks), verbose=0)  # fmt: skip
    _finite(history.history["loss"], "the training loss")
    return history


_LOSS_DATA = {
    "ContrastiveLoss": lambda: (np.array([0.0, 1.0, 1.0, 0.0], "float32"),
                                np.array([0.2, 1.5, 0.3, 2.0], "float32")),
    "SmoothL1": lambda: (np.zeros((4, 1), "float32"), np.linspace(-2, 2, 4, dtype="float32")[:, None]),
    "SparseCategoricalCrossentropy": lambda: (np.array([0, 1, 2, 1]),
                                              np.random.default_rng(0).normal(size=(4, 3)).astype("float32")),
    "TripletLoss": lambda: (np.array([0, 0, 1, 1, 2, 2]),
                            np.random.default_rng(0).normal(size=(6, 3)).astype("float32")),
}  # fmt: skip


def exercise(key, result, kwargs):
    """Use ``result`` of the call ``key(**kwargs)`` the way a user would; raise if it fails."""
    import keras

    from nnkit.callbacks import BackupAndRestore
    from nnkit.meta import MetaLearner, TaskBatches, TaskSampler
    from nnkit.tuning import MedianStopping

    name = key.split(".")[1]
    if isinstance(result, keras.optimizers.schedules.LearningRateSchedule):
        values = [float(result(step)) for step in (0, 1, 7, 100, 10**6)]
        _finite(values, "the learning rate")
        if min(values) < 0:
            raise Broken(f"negative learning rate: {values}")
    elif isinstance(result, keras.losses.Loss):
        y_true, y_pred = _LOSS_DATA[name]()
        _finite(result(y_true, y_pred), "the loss")
    elif isinstance(result, keras.optimizers.Optimizer) and name == "KFAC":
        # KFAC trains only the model it is registered with (it refuses a bare variable).
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        result.register(model)
        model.compile(optimizer=result, loss="mse")
        x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
        model.fit(x, x[:, :2], batch_size=2, epochs=1, verbose=0)
        _finite(model.layers[0].kernel.numpy(), "the updated kernel")
    elif isinstance(result, keras.optimizers.Optimizer):
        variable = keras.Variable(np.ones((3, 2), "float32"))
        for _ in range(3):
            result.apply([keras.ops.ones((3, 2)) * 0.1], [variable])
        _finite(variable.numpy(), "the updated variable")
    elif isinstance(result, keras.regularizers.Regularizer):
        _finite(result(keras.ops.ones((3, 2))), "the penalty")
    elif isinstance(result, MetaLearner):
        result.compile(optimizer="adam", loss="mse")
        x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
        y = np.random.default_rng(1).normal(size=(6, 3)).astype("float32")
        adapted = result.adapt(x, y)
        _finite(adapted.predict(x, verbose=0), "the adapted model's prediction")
    elif isinstance(result, keras.Model):
        if key in ("models.MixUp", "models.SharpnessAwareMinimization"):
            _fit(result, epochs=1)
        else:
            _finite(result.predict(np.ones((2, result.inputs[0].shape[-1]), "float32"), verbose=0),
                    "the prediction")  # fmt: skip
    elif isinstance(result, keras.layers.Layer):
        _finite(result(np.ones((4, 6), "float32"), training=True), "the layer's output")
    elif isinstance(result, MedianStopping):
        pass  # needs a tuner's trial; its arguments are all validated in __init__
    elif isinstance(result, keras.callbacks.Callback):
        import keras as k

        model = k.Sequential(
            [k.Input((4,)), k.layers.Dense(4, activation="tanh"), k.layers.Dense(1)]
        )
        callbacks = [result]
        if name in ("PreemptionSave", "ExceptionSave"):  # they need a backup to save into
            callbacks = [result, BackupAndRestore(tempfile.mkdtemp(prefix="nnkit-bad-input-"))]
        _fit(model, callbacks, epochs=3)
    elif isinstance(result, (TaskSampler, TaskBatches)):
        inputs, y_query = result.sample(2, seed=0) if isinstance(result, TaskSampler) else result[0]
        for array in [*inputs.values(), y_query]:
            _finite(np.asarray(array, "float64"), "a sampled task")
    elif isinstance(result, keras.initializers.Initializer):
        _finite(result((3, 4)), "the initial values")
    elif isinstance(result, (bool, str)) or result is None:
        pass
    elif isinstance(result, (int, float, np.ndarray, np.generic)):
        _finite(result, "the result")
    elif hasattr(result, "numpy"):
        _finite(result.numpy(), "the result")
    return result


# -- the probe loop ---------------------------------------------------------------


def _kind(key, parameter, value):
    if (key, parameter.name) in KINDS:
        return KINDS[(key, parameter.name)]
    if parameter.name in DATA:
        return "data"
    default = parameter.default
    sample = (
        value if value is not None else (None if default is inspect.Parameter.empty else default)
    )
    if isinstance(sample, bool):
        return "bool"
    if isinstance(sample, int):
        return "int"
    if isinstance(sample, float):
        return "number"
    if isinstance(sample, str):
        return "str"
    if (
        isinstance(sample, (list, tuple))
        and sample
        and all(isinstance(item, (str, int)) and not isinstance(item, bool) for item in sample)
    ):
        return "list"
    return "object"


def probes(key, kwargs):
    """Yield ``(parameter, label, value, role)`` for every probe of ``key``'s valid call."""
    target = resolve(key)
    signature = inspect.signature(target)
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        name = parameter.name
        current = kwargs.get(name, parameter.default)
        kind = _kind(key, parameter, current)
        none_is_default = parameter.default is None
        table = {} if kind in ("data", "batches") else dict(WRONG_COMMON)
        if kind in ("data", "batches") and not none_is_default:
            table["None"] = None
        table.update(WRONG[kind])
        if none_is_default:
            table.pop("None", None)
        valid = VALID.get((key, name), {})
        for label, value in table.items():
            yield name, label, value, "range" if label in valid else "wrong"
        for label, value in RANGE[kind].items():
            yield name, label, value, "range"
        if kind in ("int", "number") and current is not None and not isinstance(current, bool):
            numpy_type = np.int64 if kind == "int" else np.float32
            yield name, "numpy", numpy_type(current), "valid"
            yield name, "0-d array", np.array(current), "valid"


def _echoes(message, value):
    texts = {repr(value), str(value)}
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        texts.add(str(int(value)))
    return any(text[:40] in message for text in texts)


def _raised_in_nnkit(error):
    traceback = error.__traceback__
    last = None
    while traceback is not None:
        last = traceback.tb_frame.f_code.co_filename
        traceback = traceback.tb_next
    return (
        last is not None
        and f"{os.sep}nnkit{os.sep}" in last
        and f"{os.sep}tests{os.sep}" not in last
    )


def judge_error(error, name, value):
    """``"clear"`` or ``"unclear: <why>"`` for an exception raised by a probe."""
    if isinstance(error, Hang):
        return "hang"
    # FileNotFoundError: a path that does not exist (Python's and Keras's own class).
    if not isinstance(error, (ValueError, TypeError, FileNotFoundError)):
        return f"unclear: {type(error).__name__}"
    message = str(error)
    if name not in message:
        return "unclear: argument not named"
    if not _echoes(message, value):
        return "unclear: value not echoed"
    if not _raised_in_nnkit(error):
        return "unclear: raised outside nnkit"
    return "clear"


def run_probe(key, name, value, role, root):
    """Classify one probe: clear, unclear: …, silent: …, hang, accepted or rejected."""
    context = Context(root)
    kwargs = BASELINES[key](context)
    kwargs[name] = value
    target = resolve(key)
    try:
        with time_limit():
            result = target(**kwargs)
    except Exception as error:  # noqa: BLE001 (classified, not swallowed)
        if role == "valid":
            return f"rejected: {type(error).__name__}: {str(error)[:200]}"
        return judge_error(error, name, value)
    try:
        with time_limit():
            exercise(key, result, kwargs)
    except Hang:
        return "hang"
    except Exception as error:  # noqa: BLE001
        if (key, name) in LATE and judge_error(error, "", value) == "clear":
            return "clear"
        return f"silent: accepted, then {type(error).__name__}: {str(error)[:200]}"
    if role == "wrong":
        return "silent: accepted"
    return "accepted"


def baseline_works(key, root):
    """Run ``key``'s valid call and its exercise; return ``None`` or the error text."""
    context = Context(root)
    try:
        with time_limit():
            exercise(key, resolve(key)(**BASELINES[key](context)), None)
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"
    return None


@contextlib.contextmanager
def _working_directory(path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def fuzz(key, root=None):
    """Every probe of ``key``: a list of ``(parameter, label, role, outcome)``.

    Runs in a temporary working directory: a string probe accepted as a
    relative path (``log_dir="no-such-option"``) writes there.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp, _working_directory(tmp):
        root = root or tmp
        kwargs = BASELINES[key](Context(root))
        for name, label, value, role in probes(key, kwargs):
            rows.append((name, label, role, run_probe(key, name, value, role, root)))
    return rows


def summary(outcomes):
    """Counts of the outcome classes (tried, clear, unclear, silent, hang, accepted, rejected)."""
    counts = dict.fromkeys(
        ("tried", "clear", "unclear", "silent", "hang", "accepted", "rejected"), 0
    )
    for outcome in outcomes:
        counts["tried"] += 1
        counts[outcome.split(":")[0]] += 1
    return counts

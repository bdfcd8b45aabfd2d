"""The composition matrix's one table: every training-time part, what it adds, what it means.

Each ``Part`` has ``attach(run)`` (adds itself to a ``_run.Run`` being
built) and ``check(run, result)`` (asserts what the part *means* after the
fit, against the closed forms of ``_run``, taking the documented rules of
its neighbours into account), and ``checks``: the sentence the docs table
prints. ``REFUSED`` maps pairs to the error that refuses them, ``NOT_A_PAIR``
to why they are not a combination, ``XFAIL`` to the issue-21 item whose fix
will make them pass, ``WARNS`` to the warning the pair must give.
``tests/composition/test_matrix.py`` runs the table; ``docs/composition.md``
is rendered from it (``python -m tests.composition.render``).
"""

import dataclasses
import itertools

from tests.composition import _checks as C
from tests.composition import _run as R


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    kind: str  # optimizer, wrapper, callback, model, schedule, strategy, backend
    attach: object
    check: object
    checks: str  # what the check asserts, for the docs table


# -- the table ---------------------------------------------------------------------------

PARTS = [
    Part("KFAC", "optimizer", C.optimizer(C.kfac), C.preconditioned,
         "curvature statistics accumulate; with a known first gradient, the first step is not SGD's"),
    Part("KFAC(adaptive)", "optimizer", C.optimizer(C.kfac_adaptive), C.preconditioned,
         "as KFAC; the step is the quadratic model's (the rate scales it)"),
    Part("Shampoo", "optimizer", C.optimizer(C.shampoo), C.preconditioned,
         "statistics accumulate; with a known first gradient, the first step is not SGD's"),
    Part("SOAP", "optimizer", C.optimizer(C.soap), C.preconditioned,
         "statistics accumulate; with a known first gradient, the first step is not SGD's"),
    Part("SGD(OneCycleMomentum)", "optimizer", C.optimizer(C.cycled_sgd), C.momentum_cycled,
         "the momentum is the cycle's closed form at the last step; a known first step is SGD's"),
    Part("SharpnessAwareMinimization", "wrapper", C.sam_attach, C.sam_check,
         "SAM is the train step; with SGD and a known first gradient, the first step equals SAM's formula"),
    Part("MixUp", "wrapper", C.mixup_attach, C.mixup_check,
         "the first batch's loss is not the unmixed batch's"),
    Part("MAML", "wrapper", C.maml_attach, C.maml_check,
         "meta-parameters move; adapt() lowers a task's support loss"),
    Part("accumulate_gradients", "wrapper", C.accumulation_attach, C.accumulation_check,
         "N=2 micro-batches of 8: one update an epoch; with SGD, the first is w − η·∇L over "
         "the 16 rows. Its neighbours' checks count updates: a schedule (the rate, one-cycle's "
         "μ, the rate monitor's samples) is read at each update's last micro-batch (update j at "
         "j·N + N − 1; with one-cycle the second update is checked too), and SAM's first update "
         "averages the micro-batches' g', one ε each at the same w (m-sharpness, m = N); "
         "K-FAC's factors accumulate with the gradients: one factor update per update, the first "
         "layer's A after U updates is (1 − β^U)·mean(x̃ x̃ᵀ) over the 16 rows"),
    Part("GradientNormMonitor", "callback", C.callback("GradientNormMonitor", C.monitor_factory),
         C.monitor_check, "one group per parameter; with a known first gradient, the first "
         "norm equals its norm (under SAM: at w + ε)"),
    Part("StochasticWeightAveraging", "callback",
         C.callback("StochasticWeightAveraging", C.swa_factory), C.swa_check,
         "the final weights are the mean of the epoch-end weights it averaged"),
    Part("EarlyStopping", "callback", C.callback("EarlyStopping", C.stop_factory(False)),
         C.stop_check(False), "stops after epoch 1; ends on the last epoch's weights"),
    Part("EarlyStopping(restore)", "callback",
         C.callback("EarlyStopping(restore)", C.stop_factory(True)), C.stop_check(True),
         "stops after epoch 1; ends on the best epoch's weights (SWA's average wins)"),
    Part("ReduceLROnPlateau", "callback", C.callback("ReduceLROnPlateau", C.plateau_factory),
         C.plateau_check, "the rate after the plateau is 0.5 × the rate it replaces"),
    Part("LearningRateMonitor", "callback",
         C.callback("LearningRateMonitor", C.rate_monitor_factory), C.rate_monitor_check,
         "its samples are the optimizer's rate at every step"),
    Part("ThroughputMonitor", "callback", C.callback("ThroughputMonitor", C.throughput_factory),
         C.throughput_check, "a pure observer: logs its figures; without it the run ends on the "
         "same weights"),
    Part("BackupAndRestore", "callback", C.backup_attach, C.backup_check,
         "a run killed as epoch 1 begins, then resumed, ends on the uninterrupted run's weights"),
    Part("ExceptionSave", "callback", C.exception_attach, C.backup_check,
         "a run failing as epoch 1 begins, before the backup's own hook, writes the backup "
         "that was due; resumed at epoch 1, it ends on the uninterrupted run's weights"),
    Part("MedianStopping", "callback", C.callback("MedianStopping", C.median_factory),
         C.median_check, "stops after epoch 1 against a better reference curve"),
    Part("lsuv", "model", C.lsuv_attach, C.lsuv_check,
         "every layer's output variance is 1 after it"),
    Part("DropPath", "model", C.drop_path_attach, C.drop_path_check,
         "active in training, the identity in inference"),
    Part("apply_regularization", "model", C.regularization_attach, C.regularization_check,
         "model.losses is L2 · Σ‖kernel‖² of the parameters, one per kernel"),
    Part("CosineAnnealing", "schedule", C.schedule_attach, C.check_rates,
         "the rate at every step equals warmup + cosine's formula"),
    Part("MirroredStrategy", "strategy", C.mirrored_attach, C.mirrored_check,
         "two replicas end on one device's weights (not with per-row randomness)"),
    Part("JAX", "backend", C.jax_attach, C.jax_check, "the run trains on the JAX backend"),
]  # fmt: skip

BY_NAME = {part.name: part for part in PARTS}

# -- pairs ------------------------------------------------------------------------------


def key(names):
    return frozenset(names)


def lookup(table, names):
    """The entry of ``table`` for a pair within ``names`` (a case containing a refused pair
    is refused), or ``None``."""
    for pair, entry in table.items():
        if pair <= key(names):
            return entry
    return None


#: Pairs that are not a combination a user can write, with the reason (docs: "n/a").
NOT_A_PAIR = {
    key(("KFAC", "Shampoo")): "a model has one optimizer",
    key(("KFAC", "KFAC(adaptive)")): "a model has one optimizer",
    key(("KFAC(adaptive)", "Shampoo")): "a model has one optimizer",
    key(("KFAC(adaptive)", "SOAP")): "a model has one optimizer",
    key(("KFAC(adaptive)", "CosineAnnealing")): "a schedule is a learning rate, and the adaptive "
    "step has none (it chooses the step; `KFAC(schedule)` is the fixed-rate step)",
    key(("KFAC", "SOAP")): "a model has one optimizer",
    key(("Shampoo", "SOAP")): "a model has one optimizer",
    key(("KFAC", "SGD(OneCycleMomentum)")): "a model has one optimizer",
    key(("Shampoo", "SGD(OneCycleMomentum)")): "a model has one optimizer",
    key(("SOAP", "SGD(OneCycleMomentum)")): "a model has one optimizer",
    key(("KFAC(adaptive)", "SGD(OneCycleMomentum)")): "a model has one optimizer",
    key(("MirroredStrategy", "JAX")): "`tf.distribute` strategies are TensorFlow's; on JAX "
    "use `keras.distribution` (docs/scaling-out.md)",
}

#: Pairs refused with a clear error: (exception type, fragment of the message, what to do).
REFUSED = {
    key(("KFAC", "MAML")): (
        ValueError,
        "MAML cannot train with KFAC",
        "the adaptation computes the meta-loss without the registered layers' calls, where "
        "K-FAC captures its statistics (it trained silently as SGD with momentum). Use a "
        "first-order optimizer, Shampoo or SOAP for the outer loop.",
    ),
    key(("KFAC", "GradientNormMonitor", "MirroredStrategy")): (
        ValueError,
        "GradientNormMonitor cannot measure the gradients of KFAC",
        "under a strategy the monitor measures at Keras's all-reduce, where K-FAC hands its "
        "preconditioned direction, not the gradient. Monitor K-FAC on one device or on JAX.",
    ),
    key(("KFAC(adaptive)", "MAML")): (
        ValueError,
        "MAML cannot train with KFAC",
        "as for KFAC with a fixed rate: the adaptation computes the meta-loss without the "
        "registered layers' calls.",
    ),
    key(("KFAC(adaptive)", "SharpnessAwareMinimization")): (
        ValueError,
        "did not call",
        "the adaptive step evaluates the quadratic model on the registered model's own batch "
        "and loss, which SAM's two-pass step (at w + ε) does not give it. Use a float learning "
        "rate with SAM.",
    ),
    key(("KFAC(adaptive)", "MixUp")): (
        ValueError,
        "did not call",
        "the wrapper computes the (mixed) loss, not the registered model: use a float learning "
        "rate with MixUp.",
    ),
    key(("KFAC(adaptive)", "GradientNormMonitor", "MirroredStrategy")): (
        ValueError,
        "GradientNormMonitor cannot measure the gradients of KFAC",
        "as for KFAC with a fixed rate.",
    ),
    key(("KFAC(adaptive)", "accumulate_gradients")): (
        ValueError,
        "only with a fixed learning rate and the empirical",
        "the adaptive step's quadratic model needs the whole batch's curvature along the "
        "update, known only after the last micro-batch, and the sampled Fisher draws its "
        "targets per step: use KFAC with a fixed rate and fisher='empirical' (its factors "
        "accumulate with the gradients), or raise the batch size.",
    ),
    key(("MixUp", "MAML")): (
        ValueError,
        "MAML trains on batches of tasks, and MixUp transforms batches of examples",
        "MixUp mixes batches of examples, a meta-learner trains on batches of tasks (it would "
        "mix whole tasks); `MixUp(MAML(...))` is refused too. Meta-train the plain model.",
    ),
}

#: Pairs broken on main by a bug another issue-21 item fixes: the reason (strict xfail).
XFAIL = {}

#: Pairs that must warn (a documented conflict): a fragment of the warning.
WARNS = {
    key(("StochasticWeightAveraging", "EarlyStopping(restore)")): "the model ends on SWA's average",
}

#: Pairs whose callback order matters: run in both orders.
ORDERED = {
    key(("StochasticWeightAveraging", "EarlyStopping(restore)")),
    key(("StochasticWeightAveraging", "BackupAndRestore")),
    key(("ReduceLROnPlateau", "LearningRateMonitor")),
}

#: Triples users write, run like pairs.
TRIPLES = [
    ("KFAC", "SharpnessAwareMinimization", "BackupAndRestore"),
    ("StochasticWeightAveraging", "EarlyStopping(restore)", "ReduceLROnPlateau"),
    ("MixUp", "SharpnessAwareMinimization", "GradientNormMonitor", "MirroredStrategy"),
    ("KFAC", "GradientNormMonitor", "MirroredStrategy"),
    ("KFAC(adaptive)", "GradientNormMonitor", "MirroredStrategy"),
    ("CosineAnnealing", "LearningRateMonitor", "accumulate_gradients"),
    ("KFAC", "accumulate_gradients", "MirroredStrategy"),
]


def combinations():
    """Every case: each unordered pair in table order, the reverse of ordered pairs, triples."""
    names = [part.name for part in PARTS]
    cases = [tuple(pair) for pair in itertools.combinations(names, 2)]
    cases += [(b, a) for a, b in itertools.combinations(names, 2) if key((a, b)) in ORDERED]
    return cases + list(TRIPLES)


def case_id(names):
    return "+".join(names)


def run_case(names, tmp_path):
    """Build the run from ``names`` in order, train it, run every part's check; warnings list."""
    import warnings

    run = R.Run(names, tmp_path)
    for name in names:
        BY_NAME[name].attach(run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run.execute()
    for name in names:
        BY_NAME[name].check(run, result)
    return [f"{w.category.__name__}: {w.message}" for w in caught]

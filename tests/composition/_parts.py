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
import json
import math

import keras
import numpy as np

from nnkit._arrays import to_numpy
from tests.composition import _run as R

RHO = 0.05
L2 = 0.01
SCHEDULE = {"peak": 0.05, "floor": 0.005, "warmup": 2}  # CosineAnnealing over EPOCHS · STEPS


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    kind: str  # optimizer, wrapper, callback, model, schedule, strategy, backend
    attach: object
    check: object
    checks: str  # what the check asserts, for the docs table


def _close(got, want, what, rtol=1e-4, atol=1e-5):
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{what} [{i}]")


def _first_batch(run):
    x, y = R.data()
    return x[: R.BATCH].astype("float64"), y[: R.BATCH].astype("float64")


def _l2(run):
    return L2 if run.has("apply_regularization") else 0.0


# -- the learning rate every step should have -------------------------------------------


def base_rate(run, step):
    if not run.has("CosineAnnealing"):
        return R.LEARNING_RATE
    peak, floor, warmup = SCHEDULE["peak"], SCHEDULE["floor"], SCHEDULE["warmup"]
    if step < warmup:
        return peak * step / warmup
    t, length = step - warmup, R.EPOCHS * R.STEPS - warmup
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(t, length) / length))


def plateau_scale(run, epoch):
    """ReduceLROnPlateau(patience=1, factor=0.5) on a loss it never sees improve: from epoch 2."""
    return 0.5 if run.has("ReduceLROnPlateau") and epoch >= 2 else 1.0


def check_rates(run, result):
    for index, (step, rate) in enumerate(result.record.rates):
        epoch = index // R.STEPS
        want = base_rate(run, step) * plateau_scale(run, epoch)
        assert math.isclose(rate, want, rel_tol=1e-5, abs_tol=1e-7), (index, step, rate, want)


# -- optimizers ---------------------------------------------------------------------------


def _optimizer(factory):
    def attach(run):
        run.optimizer = lambda run, model: factory(run.learning_rate, model)

    return attach


def _preconditioned(run, result):
    """Curvature statistics accumulated (a square state matrix with off-diagonal mass) and,
    where the first gradient is known, a first step that is not SGD's."""
    matrices = [
        to_numpy(v)
        for v in result.optimizer.variables
        if len(v.shape) == 2 and v.shape[0] == v.shape[1] and v.shape[0] > 1
    ]
    assert any(np.abs(m - np.diag(np.diag(m))).max() > 0 for m in matrices), "no statistics"
    assert all(np.all(np.isfinite(w)) for w in result.final)
    rate = base_rate(run, 0)
    if run.plain_gradient and rate > 0 and result.record.first_step is not None:
        x, y = _first_batch(run)
        _, g = R.gradient(result.initial, x, y, _l2(run))
        sgd = [w - rate * gi for w, gi in zip(result.initial, g, strict=True)]
        differs = max(
            np.abs(a - b).max() for a, b in zip(result.record.first_step, sgd, strict=True)
        )
        assert differs > 1e-6, "the first step is plain SGD's"


def _kfac(rate, model):
    from nnkit.optimizers import KFAC

    return KFAC(rate, model=model, damping=1e-2, output_fisher="mean_squared_error")


def _shampoo(rate, model):
    from nnkit.optimizers import Shampoo

    return Shampoo(rate, damping=1e-2, precondition_every=1, start_preconditioning_step=1)


def _soap(rate, model):
    from nnkit.optimizers import SOAP

    return SOAP(rate, epsilon=1e-4, precondition_every=1, start_preconditioning_step=1)


# -- wrappers -----------------------------------------------------------------------------


def _sam_attach(run):
    from nnkit.models import SharpnessAwareMinimization

    def wrap(run, model):
        # R replicas train like one device with num_batch_splits = R (its docstring).
        splits = 2 if run.strategy is not None and run.current_replicas == 1 else 1
        return SharpnessAwareMinimization(model, RHO, num_batch_splits=splits)

    run.wrappers.append(wrap)


def _sam_check(run, result):
    assert result.trained.sharpness_aware() is not None
    if run.optimizer is not None or not run.plain_gradient:
        return
    x, y = _first_batch(run)
    splits = 2 if run.strategy is not None else 1
    want = R.sam_step(
        result.initial, x, y, rho=RHO, rate=base_rate(run, 0), splits=splits, l2=_l2(run)
    )
    _close(result.record.first_step, want, "SAM's first step")


def _mixup_attach(run):
    from nnkit.models import MixUp

    run.wrappers.append(lambda run, model: MixUp(model, 1.0, seed=5))


def _mixup_check(run, result):
    if run.drop_path:
        return
    x, y = _first_batch(run)
    unmixed, _ = R.gradient(result.initial, x, y, _l2(run))
    assert abs(result.record.first_loss - unmixed) > 1e-4, "the first batch was not mixed"


def _maml_attach(run):
    from nnkit.meta import MAML

    run.meta = True
    run.wrappers.append(
        lambda run, model: MAML(model, 0.05, 1, first_order=True, transductive=False)
    )


def _maml_check(run, result):
    assert all(np.all(np.isfinite(w)) for w in result.final)
    assert max(np.abs(a - b).max() for a, b in zip(result.final, result.initial, strict=True)) > 0
    inputs, _ = run.data_for_fit()
    x_s, y_s = inputs["x_support"][0], inputs["y_support"][0]
    before = float(np.mean((to_numpy(result.user_model(x_s)) - y_s) ** 2))
    learner = result.trained
    while not hasattr(learner, "adapt"):  # SAM(MAML(net)): the learner inside the wrapper
        learner = learner.model
    adapted = learner.adapt(x_s, y_s, steps=1)
    after = float(np.mean((to_numpy(adapted(x_s)) - y_s) ** 2))
    assert after < before, (before, after)


# -- callbacks ------------------------------------------------------------------------------


def _callback(name, factory):
    def attach(run):
        run.callbacks.append((name, factory))

    return attach


def _monitor_factory(run):
    from nnkit.callbacks import GradientNormMonitor

    return GradientNormMonitor(1, by="variable")


def _monitor_check(run, result):
    monitor = result.callbacks["GradientNormMonitor"]
    assert len(monitor.layers) == len(result.initial), monitor.layers
    if not run.plain_gradient:
        return
    x, y = _first_batch(run)
    weights = result.initial
    if run.has("SharpnessAwareMinimization"):  # the gradient the optimizer applies: at w + ε
        splits = 2 if run.strategy is not None else 1
        parts = np.array_split(np.arange(len(x)), splits)
        total = [np.zeros_like(w) for w in weights]
        for rows in parts:
            _, g = R.gradient(weights, x[rows], y[rows], _l2(run))
            scale = RHO / (R.global_norm(g) + 1e-12)
            shifted = [w + scale * gi for w, gi in zip(weights, g, strict=True)]
            _, gp = R.gradient(shifted, x[rows], y[rows], _l2(run))
            total = [t + len(rows) / len(x) * a for t, a in zip(total, gp, strict=True)]
        want = R.global_norm(total)
    else:
        want = R.global_norm(R.gradient(weights, x, y, _l2(run))[1])
    got = float(monitor.history["global_norm"][0])
    assert math.isclose(got, want, rel_tol=1e-4), (got, want)


def _swa_factory(run):
    from nnkit.callbacks import StochasticWeightAveraging

    return StochasticWeightAveraging(1)


def _swa_check(run, result):
    swa = result.callbacks["StochasticWeightAveraging"]
    assert len(swa.average) == len(result.initial), "SWA averages more than the parameters"
    ran = result.record.epochs
    assert swa.averaged_epochs == [e for e in ran if e >= 1], (swa.averaged_epochs, ran)
    snapshots = [result.record.epoch_weights[ran.index(e)] for e in swa.averaged_epochs]
    want = [np.mean([s[i] for s in snapshots], axis=0) for i in range(len(result.initial))]
    _close(result.final, want, "SWA's average")


def _stop_factory(restore):
    def make(run):
        from nnkit.callbacks import EarlyStopping

        # min_delta huge: only epoch 0 improves, so it stops after epoch 1, best_epoch 0.
        return EarlyStopping("loss", min_delta=1e9, patience=1, restore_best_weights=restore)

    return make


def _stop_check(restore):
    name = "EarlyStopping(restore)" if restore else "EarlyStopping"

    def check(run, result):
        stop = result.callbacks[name]
        assert stop.stopped_epoch == 1 and result.record.epochs[-1] == 1, result.record.epochs
        if run.has("StochasticWeightAveraging"):
            return  # the average wins (docs/generalization.md); SWA's check covers it
        epoch = 0 if restore or run.has("EarlyStopping(restore)") else 1
        _close(result.final, result.record.epoch_weights[epoch], f"{name}'s final weights")

    return check


def _plateau_factory(run):
    from nnkit.callbacks import ReduceLROnPlateau

    return ReduceLROnPlateau("loss", 0.5, 1, min_delta=1e9)


def _plateau_check(run, result):
    check_rates(run, result)
    if result.record.epochs[-1] < 2:  # stopped before the reduced epoch: read the rate
        step = int(to_numpy(result.optimizer.iterations))
        rate = float(to_numpy(result.optimizer.learning_rate))
        assert math.isclose(rate, 0.5 * base_rate(run, step), rel_tol=1e-5), rate


def _rate_monitor_factory(run):
    from nnkit.callbacks import LearningRateMonitor

    return LearningRateMonitor(every_n_steps=1)


def _rate_monitor_check(run, result):
    monitor = result.callbacks["LearningRateMonitor"]
    got = [(int(step), float(rate)) for step, rate in monitor.samples]
    want = result.record.rates
    assert [s for s, _ in got] == [s for s, _ in want], (got, want)
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8), (got, want)


def _backup_attach(run):
    from nnkit.callbacks import BackupAndRestore

    run.resume = True
    run.callbacks.append(("BackupAndRestore", lambda run: BackupAndRestore(run.backup_dir)))


def _backup_check(run, result):
    resumed = result.extra["resumed"]
    assert resumed.record.epochs[0] == 1, resumed.record.epochs
    assert resumed.record.epochs[-1] == result.record.epochs[-1]
    _close(resumed.final, result.final, "resumed vs uninterrupted", rtol=1e-5, atol=1e-6)


def _median_factory(run):
    from nnkit.tuning import MedianStopping

    folder = run.tmp_path / "median"
    folder.mkdir(exist_ok=True)
    reference = {"monitor": "loss", "epochs": [0, 1, 2], "values": [0.0, 0.0, 0.0]}
    (folder / "reference.json").write_text(json.dumps(reference))
    return MedianStopping("loss", 1, 1, directory=str(folder))


def _median_check(run, result):
    rule = result.callbacks["MedianStopping"]
    assert rule.stopped and rule.stopped_epoch == 1, rule.stop_message
    assert result.record.epochs[-1] == 1


# -- model parts -------------------------------------------------------------------------


def _lsuv_attach(run):
    from nnkit.initializers import lsuv

    def hook(run, model):
        batch = np.linspace(-2, 2, 64, dtype="float32").reshape(-1, 1) if run.meta else None
        if batch is None:
            batch = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
        run.notes["lsuv"] = lsuv(model, batch, seed=0)

    run.model_hooks.append(hook)


def _lsuv_check(run, result):
    report = run.notes["lsuv"]
    assert report.converged
    assert all(abs(row.final_variance - 1) < 0.1 for row in report.layers), report


def _drop_path_attach(run):
    run.drop_path = True


def _drop_path_check(run, result):
    model = result.user_model
    x = run.data_for_fit()[0]
    x = x["x_query"][0] if run.meta else x
    train, infer = to_numpy(model(x, training=True)), to_numpy(model(x, training=False))
    np.testing.assert_array_equal(infer, to_numpy(model(x, training=False)))
    assert np.abs(train - infer).max() > 1e-6, "DropPath inactive in training"


def _regularization_attach(run):
    from nnkit.regularizers import L2 as Penalty
    from nnkit.regularizers import apply_regularization

    run.model_hooks.append(lambda run, model: apply_regularization(model, Penalty(L2)))


def _regularization_check(run, result):
    kernels = [w for w in R.parameters(result.user_model) if w.path.endswith("kernel")]
    want = L2 * sum(float(np.sum(R.values([w])[0] ** 2)) for w in kernels)
    got = float(sum(to_numpy(loss) for loss in result.user_model.losses))
    assert math.isclose(got, want, rel_tol=1e-4), (got, want)
    assert len(result.user_model.losses) == len(kernels)


def _schedule_attach(run):
    from nnkit.schedules import CosineAnnealing

    run.learning_rate = CosineAnnealing(
        SCHEDULE["peak"],
        R.EPOCHS * R.STEPS,
        SCHEDULE["floor"],
        warmup_steps=SCHEDULE["warmup"],
    )


# -- strategy and backend ----------------------------------------------------------------


def _mirrored_attach(run):
    from tests.distribute._mirrored import mirrored_strategy

    run.strategy = mirrored_strategy


RANDOM_ROWS = ("MixUp", "DropPath")


def _mirrored_check(run, result):
    assert result.trained.distribute_strategy.num_replicas_in_sync == 2
    if run.has(*RANDOM_ROWS):  # each replica draws its own rows: not one device's run
        return
    one = result.extra["one_device"]
    _close(result.final, one.final, "two replicas vs one device", rtol=1e-4, atol=1e-5)


def _jax_attach(run):
    run.backend = "jax"


def _jax_check(run, result):
    assert keras.backend.backend() == "jax"


# -- the table ---------------------------------------------------------------------------

PARTS = [
    Part("KFAC", "optimizer", _optimizer(_kfac), _preconditioned,
         "curvature statistics accumulate; the first step is not SGD's"),
    Part("Shampoo", "optimizer", _optimizer(_shampoo), _preconditioned,
         "statistics accumulate; the first step is not SGD's"),
    Part("SOAP", "optimizer", _optimizer(_soap), _preconditioned,
         "statistics accumulate; the first step is not SGD's"),
    Part("SharpnessAwareMinimization", "wrapper", _sam_attach, _sam_check,
         "the first step equals SAM's formula (SGD, closed-form gradient)"),
    Part("MixUp", "wrapper", _mixup_attach, _mixup_check,
         "the first batch's loss is not the unmixed batch's"),
    Part("MAML", "wrapper", _maml_attach, _maml_check,
         "meta-parameters move; adapt() lowers a task's support loss"),
    Part("GradientNormMonitor", "callback", _callback("GradientNormMonitor", _monitor_factory),
         _monitor_check, "one group per parameter; the first norm equals the closed-form "
         "gradient's (under SAM: at w + ε)"),
    Part("StochasticWeightAveraging", "callback",
         _callback("StochasticWeightAveraging", _swa_factory), _swa_check,
         "the final weights are the mean of the epoch-end weights it averaged"),
    Part("EarlyStopping", "callback", _callback("EarlyStopping", _stop_factory(False)),
         _stop_check(False), "stops after epoch 1; ends on the last epoch's weights"),
    Part("EarlyStopping(restore)", "callback",
         _callback("EarlyStopping(restore)", _stop_factory(True)), _stop_check(True),
         "stops after epoch 1; ends on the best epoch's weights (SWA's average wins)"),
    Part("ReduceLROnPlateau", "callback", _callback("ReduceLROnPlateau", _plateau_factory),
         _plateau_check, "the rate after the plateau is 0.5 × the rate it replaces"),
    Part("LearningRateMonitor", "callback",
         _callback("LearningRateMonitor", _rate_monitor_factory), _rate_monitor_check,
         "its samples are the optimizer's rate at every step"),
    Part("BackupAndRestore", "callback", _backup_attach, _backup_check,
         "a run killed as epoch 1 begins, then resumed, ends on the uninterrupted run's weights"),
    Part("MedianStopping", "callback", _callback("MedianStopping", _median_factory),
         _median_check, "stops after epoch 1 against a better reference curve"),
    Part("lsuv", "model", _lsuv_attach, _lsuv_check,
         "every layer's output variance is 1 after it"),
    Part("DropPath", "model", _drop_path_attach, _drop_path_check,
         "active in training, the identity in inference"),
    Part("apply_regularization", "model", _regularization_attach, _regularization_check,
         "model.losses is L2 · Σ‖kernel‖² of the parameters, one per kernel"),
    Part("CosineAnnealing", "schedule", _schedule_attach, check_rates,
         "the rate at every step equals warmup + cosine's formula"),
    Part("MirroredStrategy", "strategy", _mirrored_attach, _mirrored_check,
         "two replicas end on one device's weights (not with per-row randomness)"),
    Part("JAX", "backend", _jax_attach, _jax_check, "the run trains on the JAX backend"),
]  # fmt: skip

BY_NAME = {part.name: part for part in PARTS}

# -- pairs ------------------------------------------------------------------------------


def key(names):
    return frozenset(names)


def lookup(table, names):
    """The entry of ``table`` for a pair within ``names`` (a case containing a refused pair
    is refused), or ``None``. A tuple key matches its parts in that order only."""
    for pair, entry in table.items():
        if isinstance(pair, tuple):
            if all(n in names for n in pair) and [n for n in names if n in pair] == list(pair):
                return entry
        elif pair <= key(names):
            return entry
    return None


#: Pairs that are not a combination a user can write, with the reason (docs: "n/a").
NOT_A_PAIR = {
    key(("KFAC", "Shampoo")): "a model has one optimizer",
    key(("KFAC", "SOAP")): "a model has one optimizer",
    key(("Shampoo", "SOAP")): "a model has one optimizer",
    key(("MirroredStrategy", "JAX")): "`tf.distribute` strategies are TensorFlow's; on JAX "
    "use `keras.distribution` (docs/scaling-out.md)",
}

#: Pairs refused with a clear error: (exception type, fragment of the message, what to do).
REFUSED = {
    key(("SharpnessAwareMinimization", "MAML")): (
        ValueError,
        "MAML cannot meta-train a SharpnessAwareMinimization",
        "a meta-learner trains the plain model on task batches and would bypass SAM's step; "
        "`SharpnessAwareMinimization(MAML(...))` is refused too (it perturbs per batch of "
        "examples). Meta-train the plain model.",
    ),
    key(("MixUp", "MAML")): (
        ValueError,
        "MAML cannot meta-train a MixUp",
        "MixUp mixes data batches, a meta-learner trains on task batches; `MixUp(MAML(...))` "
        "is refused too. Meta-train the plain model.",
    ),
}

#: Pairs broken on main by a bug another issue-21 item fixes: the reason (strict xfail).
XFAIL = {
    key(("KFAC", "GradientNormMonitor")): "issue 21 item 2 (params): the monitor reports "
    "K-FAC's statistics channels (`kfac_input_statistic`, `kfac_output_statistic`) as "
    "gradient groups",
    key(("KFAC", "StochasticWeightAveraging")): "issue 21 item 2 (params): SWA averages "
    "K-FAC's statistics channels with the parameters",
    key(("KFAC", "lsuv")): "issue 21 item 3 (params): lsuv patches `layer.call` outside the "
    "shadow chain; `fit` on a KFAC-registered model fails with 'None values not supported'",
    key(("KFAC", "MAML")): "issue 21 item 4 (kfac): KFAC compiled into MAML collects no "
    "curvature statistics and trains silently as SGD with momentum; to be refused",
}

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

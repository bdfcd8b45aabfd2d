"""What each part of the composition matrix adds to a run, and what it means after the fit.

``attach(run)`` functions fill in a ``_run.Run``; ``check(run, result)``
functions assert a part's meaning against the closed forms of ``_run``,
taking the documented rules of its neighbours into account. The table that
names them is ``_parts.PARTS``.
"""

import json
import math

import keras
import numpy as np

from nnkit._arrays import to_numpy
from tests.composition import _run as R

RHO = 0.05
L2 = 0.01
SCHEDULE = {"peak": 0.05, "floor": 0.005, "warmup": 2}  # CosineAnnealing over EPOCHS · STEPS


def close(got, want, what, rtol=1e-4, atol=1e-5):
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{what} [{i}]")


def first_batch(run):
    x, y = R.data()
    return x[: R.BATCH].astype("float64"), y[: R.BATCH].astype("float64")


def l2(run):
    return L2 if run.has("apply_regularization") else 0.0


# -- gradient accumulation's clocks ------------------------------------------------------

ACCUMULATION = 2  # accumulate_gradients' N: micro-batches of R.BATCH rows per update


def micro_batches(run):
    """``N``: the micro-batches per optimizer update (1 without accumulation)."""
    return ACCUMULATION if run.has("accumulate_gradients") else 1


def update_clock(run, update):
    """The step Keras reads a schedule at for update ``update``: its raw counter, which counts
    micro-batches under accumulation (update ``j`` at micro-batch ``j·N + N − 1``)."""
    n = micro_batches(run)
    return update * n + n - 1


def first_update(run, result):
    """``(weights after the first update, its rows x, y)``: the first batch's, or under
    accumulation the first N micro-batches' (the first epoch's one update, N · 8 rows)."""
    n = micro_batches(run)
    x, y = R.data()
    rows = slice(0, n * R.BATCH)
    after = result.record.first_step if n == 1 else result.record.epoch_weights[0]
    return after, x[rows].astype("float64"), y[rows].astype("float64")


# -- the learning rate every step should have -------------------------------------------


def base_rate(run, step):
    if run.has("KFAC(adaptive)"):
        return 1.0  # the adaptive step's multiplier (it takes no schedule)
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
    """The rate at every batch begin; under accumulation Keras reads the schedule at its raw
    counter, micro-batch ``index`` (``iterations`` = ``step`` counts updates)."""
    n = micro_batches(run)
    for index, (step, rate) in enumerate(result.record.rates):
        epoch = index // R.STEPS
        clock = step if n == 1 else step * n + index % n
        want = base_rate(run, clock) * plateau_scale(run, epoch)
        assert math.isclose(rate, want, rel_tol=1e-5, abs_tol=1e-7), (index, step, rate, want)


# -- optimizers ---------------------------------------------------------------------------


def optimizer(factory):
    def attach(run):
        run.optimizer = lambda run, model: factory(run.learning_rate, model)

    return attach


def preconditioned(run, result):
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
        x, y = first_batch(run)
        _, g = R.gradient(result.initial, x, y, l2(run))
        sgd = [w - rate * gi for w, gi in zip(result.initial, g, strict=True)]
        differs = max(
            np.abs(a - b).max() for a, b in zip(result.record.first_step, sgd, strict=True)
        )
        assert differs > 1e-6, "the first step is plain SGD's"


def cycled_sgd(rate, model):
    from nnkit.optimizers import SGD
    from nnkit.schedules import OneCycleMomentum

    return SGD(rate, momentum=OneCycleMomentum(R.EPOCHS * R.STEPS, rise_fraction=0.5))


def cycle_momentum(step):
    """OneCycleMomentum(6, rise_fraction=0.5) written out: 0.95 → 0.85 (cos) by step 2, back
    to 0.95 by step 5, held after."""
    total, top, low = R.EPOCHS * R.STEPS, 0.95, 0.85
    rise_end, last = 0.5 * total - 1, total - 1
    if step <= rise_end:
        a, b, x = top, low, step / rise_end
    else:
        a, b, x = low, top, min(step - rise_end, last - rise_end) / (last - rise_end)
    return b + 0.5 * (a - b) * (1 + math.cos(math.pi * x))


def momentum_cycled(run, result):
    """The momentum is the cycle's at the step the run ended on, the slots carry momentum,
    and (the momentum starting at zero) a known first update is plain SGD's; under
    accumulation the second update is too, with the momentum read at the rate's clock."""
    optimizer = result.optimizer
    step = int(to_numpy(optimizer.iterations))
    got = float(to_numpy(optimizer.momentum_at(step)))
    assert math.isclose(got, cycle_momentum(step), rel_tol=1e-5), (step, got)
    slots = [to_numpy(m) for m in optimizer.momentums]
    assert any(np.abs(m).max() > 0 for m in slots) and all(np.all(np.isfinite(m)) for m in slots)
    rate = base_rate(run, update_clock(run, 0))
    wrapped = run.has("SharpnessAwareMinimization", "MixUp", "MAML")
    if not (run.plain_gradient and not wrapped and rate > 0):
        return
    after, x, y = first_update(run, result)
    if after is None:
        return
    _, g = R.gradient(result.initial, x, y, l2(run))
    first = [-rate * gi for gi in g]  # m_0 = −η g (μ · 0)
    sgd = [w + m for w, m in zip(result.initial, first, strict=True)]
    close(after, sgd, "the first update (momentum 0) is SGD's")
    if micro_batches(run) > 1 and len(result.record.epoch_weights) > 1:
        # One update an epoch over the same 16 rows: update 1 reads μ and η at micro-batch 3.
        mu, rate = cycle_momentum(update_clock(run, 1)), base_rate(run, update_clock(run, 1))
        start = result.record.epoch_weights[0]
        _, g = R.gradient(start, x, y, l2(run))
        want = [w + mu * m - rate * gi for w, m, gi in zip(start, first, g, strict=True)]
        close(result.record.epoch_weights[1], want, "the second update: μ at the rate's clock")


def kfac(rate, model):
    from nnkit.optimizers import KFAC

    return KFAC(rate, model=model, damping=1e-2, output_fisher="mean_squared_error")


def kfac_adaptive(rate, model):
    """KFAC's adaptive step (the rate multiplies the quadratic model's step) and sampled Fisher."""
    from nnkit.optimizers import KFAC

    return KFAC(model=model, damping=1e-2, fisher="sampled", output_fisher="mean_squared_error")


def shampoo(rate, model):
    from nnkit.optimizers import Shampoo

    return Shampoo(rate, relative_damping=1e-2, refresh_every=1, start_preconditioning_step=1)


def soap(rate, model):
    from nnkit.optimizers import SOAP

    return SOAP(rate, epsilon=1e-4, refresh_every=1, start_preconditioning_step=1)


# -- wrappers -----------------------------------------------------------------------------


def sam_attach(run):
    from nnkit.models import SharpnessAwareMinimization

    def wrap(run, model):
        # R replicas train like one device with num_batch_splits = R (its docstring).
        splits = 2 if run.strategy is not None and run.current_replicas == 1 else 1
        return SharpnessAwareMinimization(model, rho=RHO, num_batch_splits=splits)

    run.wrappers.append(wrap)


def sam_check(run, result):
    from nnkit.models import SharpnessAwareMinimization

    chain = result.trained
    while not isinstance(chain, SharpnessAwareMinimization):  # in the chain of wrappers
        chain = chain.model
    if run.optimizer is not None or not run.plain_gradient or run.meta:
        return
    # Under accumulation each micro-batch takes its own ε at the same w (the weights move only
    # at the update), and the update averages their g': m-sharpness with m = N micro-batches.
    after, x, y = first_update(run, result)
    splits = (2 if run.strategy is not None else 1) * micro_batches(run)
    rate = base_rate(run, update_clock(run, 0))
    want = R.sam_step(result.initial, x, y, rho=RHO, rate=rate, splits=splits, l2=l2(run))
    close(after, want, "SAM's first update")


def mixup_attach(run):
    from nnkit.models import MixUp

    run.wrappers.append(lambda run, model: MixUp(model, alpha=1.0, seed=5))


def mixup_check(run, result):
    if run.drop_path:
        return
    x, y = first_batch(run)
    unmixed, _ = R.gradient(result.initial, x, y, l2(run))
    assert abs(result.record.first_loss - unmixed) > 1e-4, "the first batch was not mixed"


def maml_attach(run):
    from nnkit.meta import MAML

    run.meta = True
    run.wrappers.append(
        lambda run, model: MAML(
            model, inner_learning_rate=0.05, inner_steps=1, first_order=True, transductive=False
        )
    )


def maml_check(run, result):
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


def callback(name, factory):
    def attach(run):
        run.callbacks.append((name, factory))

    return attach


def monitor_factory(run):
    from nnkit.callbacks import GradientNormMonitor

    return GradientNormMonitor(1, by="variable")


def monitor_check(run, result):
    monitor = result.callbacks["GradientNormMonitor"]
    assert len(monitor.layers) == len(result.initial), monitor.layers
    if not run.plain_gradient:
        return
    x, y = first_batch(run)
    weights = result.initial
    if run.has("SharpnessAwareMinimization"):  # the gradient the optimizer applies: at w + ε
        splits = 2 if run.strategy is not None else 1
        parts = np.array_split(np.arange(len(x)), splits)
        total = [np.zeros_like(w) for w in weights]
        for rows in parts:
            _, g = R.gradient(weights, x[rows], y[rows], l2(run))
            scale = RHO / (R.global_norm(g) + 1e-12)
            shifted = [w + scale * gi for w, gi in zip(weights, g, strict=True)]
            _, gp = R.gradient(shifted, x[rows], y[rows], l2(run))
            total = [t + len(rows) / len(x) * a for t, a in zip(total, gp, strict=True)]
        want = R.global_norm(total)
    else:
        want = R.global_norm(R.gradient(weights, x, y, l2(run))[1])
    got = float(monitor.history["global_norm"][0])
    assert math.isclose(got, want, rel_tol=1e-4), (got, want)


def swa_factory(run):
    from nnkit.callbacks import StochasticWeightAveraging

    return StochasticWeightAveraging(1)


def swa_check(run, result):
    swa = result.callbacks["StochasticWeightAveraging"]
    assert len(swa.average) == len(result.initial), "SWA averages more than the parameters"
    ran = result.record.epochs
    assert swa.averaged_epochs == [e for e in ran if e >= 1], (swa.averaged_epochs, ran)
    snapshots = [result.record.epoch_weights[ran.index(e)] for e in swa.averaged_epochs]
    want = [np.mean([s[i] for s in snapshots], axis=0) for i in range(len(result.initial))]
    close(result.final, want, "SWA's average")


def stop_factory(restore):
    def make(run):
        from nnkit.callbacks import EarlyStopping

        # min_delta huge: only epoch 0 improves, so it stops after epoch 1, best_epoch 0.
        return EarlyStopping("loss", min_delta=1e9, patience=1, restore_best_weights=restore)

    return make


def stop_check(restore):
    name = "EarlyStopping(restore)" if restore else "EarlyStopping"

    def check(run, result):
        stop = result.callbacks[name]
        assert stop.stopped_epoch == 1 and result.record.epochs[-1] == 1, result.record.epochs
        if run.has("StochasticWeightAveraging"):
            return  # the average wins (docs/generalization.md); SWA's check covers it
        epoch = 0 if restore or run.has("EarlyStopping(restore)") else 1
        close(result.final, result.record.epoch_weights[epoch], f"{name}'s final weights")

    return check


def plateau_factory(run):
    from nnkit.callbacks import ReduceLROnPlateau

    return ReduceLROnPlateau("loss", 0.5, 1, min_delta=1e9)


def plateau_check(run, result):
    check_rates(run, result)
    if result.record.epochs[-1] < 2:  # stopped before the reduced epoch: read the rate
        step = int(to_numpy(result.optimizer.iterations))
        rate = float(to_numpy(result.optimizer.learning_rate))
        assert math.isclose(rate, 0.5 * base_rate(run, step), rel_tol=1e-5), rate


def rate_monitor_factory(run):
    from nnkit.callbacks import LearningRateMonitor

    return LearningRateMonitor(sample_every=1)


def rate_monitor_check(run, result):
    """Its samples ``(j, η)`` are update ``j`` and the rate it used: the rate read as its last
    batch began (under accumulation the cycle's last micro-batch, where Keras reads the
    schedule for the update; ``iterations`` is ``j`` for all the cycle's micro-batches)."""
    monitor = result.callbacks["LearningRateMonitor"]
    got = [(int(step), float(rate)) for step, rate in monitor.samples]
    want = list(dict(result.record.rates).items())  # the last rate recorded at each update
    assert [s for s, _ in got] == [s for s, _ in want], (got, want)
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8), (got, want)


def backup_attach(run):
    from nnkit.callbacks import BackupAndRestore

    run.resume = True
    if not any(name == "BackupAndRestore" for name, _ in run.callbacks):  # ExceptionSave's
        run.callbacks.append(("BackupAndRestore", lambda run: BackupAndRestore(run.backup_dir)))


def exception_attach(run):
    """ExceptionSave with the backup it saves into; the run fails as epoch 1 begins, from a
    callback listed before the backup's own hook."""
    from nnkit.callbacks import ExceptionSave

    backup_attach(run)
    run.interrupt_first = True
    run.callbacks.append(("ExceptionSave", lambda run: ExceptionSave(verbose=0)))


def backup_check(run, result):
    resumed = result.extra["resumed"]
    assert resumed.record.epochs[0] == 1, resumed.record.epochs
    assert resumed.record.epochs[-1] == result.record.epochs[-1]
    close(resumed.final, result.final, "resumed vs uninterrupted", rtol=1e-5, atol=1e-6)


def median_factory(run):
    from nnkit.tuning import MedianStopping

    folder = run.tmp_path / "median"
    folder.mkdir(exist_ok=True)
    reference = {"monitor": "loss", "epochs": [0, 1, 2], "values": [0.0, 0.0, 0.0]}
    (folder / "reference.json").write_text(json.dumps(reference))
    return MedianStopping("loss", 1, 1, directory=str(folder))


def median_check(run, result):
    rule = result.callbacks["MedianStopping"]
    assert rule.stopped and rule.stopped_epoch == 1, rule.stop_message
    assert result.record.epochs[-1] == 1


def throughput_factory(run):
    from nnkit.callbacks import ThroughputMonitor

    return ThroughputMonitor(R.BATCH, flops_per_step=1000, peak_flops=1e9)


def throughput_check(run, result):
    """A pure observer: it logged its figures, and the same run without it ends on the same
    weights (the run is trained again without it)."""
    monitor = result.callbacks["ThroughputMonitor"]
    assert monitor.figures["samples_per_second"] > 0, monitor.figures
    assert monitor.figures["mfu"] > 0, monitor.figures
    saved = run.callbacks
    run.callbacks = [(name, make) for name, make in saved if name != "ThroughputMonitor"]
    try:
        plain = run.fit_once(strategy=run.strategy() if run.strategy is not None else None)
    finally:
        run.callbacks = saved
    close(result.final, plain.final, "weights without ThroughputMonitor", rtol=1e-6, atol=0)


# -- model parts -------------------------------------------------------------------------


def lsuv_attach(run):
    from nnkit.initializers import lsuv

    def hook(run, model):
        batch = np.linspace(-2, 2, 64, dtype="float32").reshape(-1, 1) if run.meta else None
        if batch is None:
            batch = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
        run.notes["lsuv"] = lsuv(model, batch, seed=0)

    run.model_hooks.append(hook)


def lsuv_check(run, result):
    report = run.notes["lsuv"]
    assert report.converged
    assert all(abs(row.final_variance - 1) < 0.1 for row in report.layers), report


def drop_path_attach(run):
    run.drop_path = True


def drop_path_check(run, result):
    model = result.user_model
    x = run.data_for_fit()[0]
    x = x["x_query"][0] if run.meta else x
    train, infer = to_numpy(model(x, training=True)), to_numpy(model(x, training=False))
    np.testing.assert_array_equal(infer, to_numpy(model(x, training=False)))
    assert np.abs(train - infer).max() > 1e-6, "DropPath inactive in training"


def regularization_attach(run):
    from nnkit.regularizers import L2 as Penalty
    from nnkit.regularizers import apply_regularization

    run.model_hooks.append(lambda run, model: apply_regularization(model, Penalty(L2)))


def regularization_check(run, result):
    kernels = [w for w in R.parameters(result.user_model) if w.path.endswith("kernel")]
    want = L2 * sum(float(np.sum(R.values([w])[0] ** 2)) for w in kernels)
    got = float(sum(to_numpy(loss) for loss in result.user_model.losses))
    assert math.isclose(got, want, rel_tol=1e-4), (got, want)
    assert len(result.user_model.losses) == len(kernels)


def schedule_attach(run):
    from nnkit.schedules import CosineAnnealing

    run.learning_rate = CosineAnnealing(
        SCHEDULE["peak"],
        R.EPOCHS * R.STEPS,
        SCHEDULE["floor"],
        warmup_steps=SCHEDULE["warmup"],
    )


# -- strategy and backend ----------------------------------------------------------------


def mirrored_attach(run):
    from tests.distribute._mirrored import mirrored_strategy

    run.strategy = mirrored_strategy


RANDOM_ROWS = ("MixUp", "DropPath")


def mirrored_check(run, result):
    assert result.trained.distribute_strategy.num_replicas_in_sync == 2
    if run.has(*RANDOM_ROWS):  # each replica draws its own rows: not one device's run
        return
    one = result.extra["one_device"]
    close(result.final, one.final, "two replicas vs one device", rtol=1e-4, atol=1e-5)


def jax_attach(run):
    run.backend = "jax"


def jax_check(run, result):
    assert keras.backend.backend() == "jax"


# -- gradient accumulation ----------------------------------------------------------------


def accumulation_attach(run):
    from nnkit.distribute import accumulate_gradients

    run.optimizer_hooks.append(lambda run, model, optimizer: accumulate_gradients(optimizer, 2))


def accumulation_check(run, result):
    """Two micro-batches of 8 per update: one update an epoch; with plain SGD and the closed-form
    gradient, the first update is w − η·∇L over all 16 rows."""
    updates = int(to_numpy(result.optimizer.iterations))
    assert updates == len(result.record.epochs) * R.STEPS // 2, updates
    if run.optimizer is None and run.plain_gradient and not run.has("apply_regularization"):
        if not run.has("SharpnessAwareMinimization"):  # SAM's check covers its update
            after, x, y = first_update(run, result)
            rate = base_rate(run, update_clock(run, 0))  # a schedule's value at micro-batch 1
            _, grads = R.gradient(result.initial, x, y)
            want = [w - rate * g for w, g in zip(result.initial, grads, strict=True)]
            close(after, want, "first update vs the 16-row batch's", rtol=1e-4, atol=1e-6)
    if run.has("KFAC"):
        kfac_accumulation_check(result, updates)


def kfac_accumulation_check(result, updates):
    """K-FAC's factors accumulate with the gradients: one factor update per update, and the
    first layer's ``A`` (its inputs are the data, the same 16 rows every epoch) is
    ``(1 − β^U)·mean(x̃ x̃ᵀ)`` over the 16 rows after ``U`` updates, as with one batch of 16."""
    optimizer = result.optimizer
    (counter,) = [v for v in optimizer.variables if v.name.endswith("kfac_factor_updates")]
    assert int(to_numpy(counter)) == updates, (int(to_numpy(counter)), updates)
    x, _ = R.data()
    rows = np.concatenate([x.astype("float64"), np.ones((len(x), 1))], axis=1)
    beta = optimizer.statistics_decay
    want = (1.0 - beta**updates) * rows.T @ rows / len(rows)
    first = next(v for v in optimizer.variables if v.name.endswith("_a_factor"))
    close([to_numpy(first)], [want], "the first layer's A vs the 16 rows'", rtol=1e-4, atol=1e-6)

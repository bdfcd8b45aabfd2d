"""lr_find: known divergence rate, exact per-batch loss, bit-identical restore, every optimizer."""

import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import nnkit.models as M
import nnkit.optimizers as O
from nnkit.schedules import CosineAnnealing
from nnkit.tuning import LearningRateRangeTest, LRFinderResult, lr_find
from nnkit.tuning._lr_result import PREFERENCE, suggest, valley, zero_phase
from nnkit.tuning.lr_finder import should_stop
from tests.tuning import _lr_finder_checks as checks

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def test_the_curve_diverges_near_2_over_lambda_max_and_suggestions_lie_below():
    result = checks.check_known_answer()
    assert isinstance(result, LRFinderResult)


def test_losses_are_per_batch_not_running_means():
    checks.check_per_batch_loss()


def test_state_is_restored_bit_for_bit():
    checks.check_restores_bit_for_bit()


def test_a_schedule_is_swept_as_a_multiplier_and_left_in_place():
    checks.check_schedule_multiplier()


def _classifier():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )


OPTIMIZERS = {
    "adam": lambda model: keras.optimizers.Adam(1e-3),
    "rmsprop": lambda model: keras.optimizers.RMSprop(1e-3),
    "KFAC": lambda model: O.KFAC(
        0.05, model=model, refresh_every=3, output_fisher="categorical_crossentropy"
    ),
    "Shampoo": lambda model: O.Shampoo(0.02, refresh_every=2, start_preconditioning_step=2),
    "SOAP": lambda model: O.SOAP(0.02, refresh_every=2, start_preconditioning_step=3),
}


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_sweeps_and_is_restored(name):
    model = _classifier()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(OPTIMIZERS[name](model), loss=loss)
    x, y = _data()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    before = checks.state(model)
    result = lr_find(model, x, y, batch_size=32, steps=12, learning_rates=(1e-4, 10.0))
    assert len(result.losses) >= 3 and np.isfinite(result.losses[0])
    for a, b in zip(before, checks.state(model), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("wrapper", ["SAM", "MixUp"])
def test_train_step_wrappers_sweep_and_are_restored(wrapper):
    x, y = _data()
    y = keras.utils.to_categorical(y, 2)
    inner = _classifier()
    if wrapper == "SAM":
        model = M.SharpnessAwareMinimization(inner, rho=0.05)
    else:
        model = M.MixUp(inner, alpha=0.4, seed=3)
    model.compile(keras.optimizers.SGD(0.01), loss=keras.losses.CategoricalCrossentropy(True))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    before = checks.state(model)
    result = lr_find(model, x, y, batch_size=32, steps=10, learning_rates=(1e-4, 10.0))
    assert len(result.losses) >= 3
    for a, b in zip(before, checks.state(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_default_is_100_steps_whatever_the_data_size():
    x, y = checks.regression(64 * 32)  # 64 batches of 32: the test repeats batches
    result = lr_find(checks.linear_model(), x, y)
    ratio = result.learning_rates[1] / result.learning_rates[0]
    assert ratio == pytest.approx((10.0 / 1e-7) ** (1 / 99))  # 100 rates over 1e-7 … 10
    assert result.rule == PREFERENCE[0] and result.suggestion == result.suggestions[result.rule]


def test_the_plot_marks_each_suggestion(tmp_path):
    x, y = checks.regression()
    result = lr_find(checks.linear_model(), x, y, batch_size=8, steps=40)
    figure = result.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [line.get_label() for line in figure.axes[0].lines]
    for name, rate in result.suggestions.items():
        assert f"{name}: {rate:.3g}" in labels
    assert set(result.rules) == {"steepest", "minimum", "valley"}


# -- the pure parts, with scripted curves ---------------------------------------------------


def test_smoothing_is_bias_corrected_and_the_stop_rule_is_a_multiple_of_the_best():
    test = LearningRateRangeTest(1e-3, 1.0, 6, stop_factor=2.0, smoothing=0.5)
    losses = [4.0, 2.0, 1.0, 1.5, 3.0, 9.0]
    decisions = [test.record(r, loss) for r, loss in zip(test.rates(), losses, strict=True)]
    average, want = 0.0, []
    for k, loss in enumerate(losses):
        average = 0.5 * average + 0.5 * loss
        want.append(average / (1 - 0.5 ** (k + 1)))
    np.testing.assert_allclose(test.smoothed, want)
    best = np.minimum.accumulate(want)
    stops = [bool(s > 2.0 * b) for s, b in zip(want[1:], best[:-1], strict=True)]
    assert [d[0] for d in decisions[1:]] == stops
    assert should_stop(math.nan, 1.0, 1.0, 4.0) == (True, "nonfinite")
    assert should_stop(1.0, 5.0, 1.0, 4.0) == (True, "diverged")
    assert should_stop(1.0, 3.0, 1.0, 4.0) == (False, None)


def test_suggestion_rules_on_a_scripted_curve():
    rates = list(np.logspace(-4, 0, 9))
    curve = [5.0, 4.9, 4.5, 3.0, 1.0, 0.6, 0.5, 2.0, 9.0]  # steepest fall between 1e-2.5 and 1e-1.5
    got = suggest(rates, curve)
    slopes = np.gradient(curve[:7], np.log(rates[:7]))  # up to the minimum, from index 1
    assert got["steepest"] == rates[1 + int(np.argmin(slopes[1:]))]
    assert got["minimum"] == pytest.approx(rates[6] / 10)
    # fastai's valley: the run 0..6 has length 7; start = end − length = −1 (its convention),
    # sections = 7 / 3, index = start + int(sections) + int(sections / 2)
    assert valley(curve) == -1 + int(7 / 3) + int(7 / 3 / 2)
    assert got["valley"] == rates[2]


def _ema(values, beta):
    out, average = [], 0.0
    for k, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta ** (k + 1)))
    return out


def test_an_exploding_loss_is_capped_at_the_start_before_the_backward_pass():
    # A curve of known shape (a small CNN's): flat at 2.3 for 40 steps, a shallow descent
    # to 1.8 at index 49, then 2.5, 3.3, one exploding batch (65) and a nan. Capped at the
    # start (the mean of the first tenth), the explosion cannot lift the points before it;
    # uncapped, the backward pass lifts the whole descent above the start.
    rates = list(np.logspace(-6, 0, 55))
    losses = [2.3] * 40 + list(np.linspace(2.3, 1.8, 11))[1:] + [2.5, 3.3, 65.0, math.nan]
    start = float(np.mean(losses[: 54 // 10]))
    capped = [min(loss, start) for loss in losses[:-1]]
    want = _ema(_ema(capped, 0.9)[::-1], 0.9)[::-1]
    got = zero_phase(losses, 0.9)
    np.testing.assert_allclose(got[:-1], want, rtol=1e-12)
    assert math.isnan(got[-1])
    assert int(np.nanargmin(got)) == 49  # the true minimum
    uncapped = _ema(_ema(losses[:-1], 0.9)[::-1], 0.9)[::-1]
    assert int(np.argmin(uncapped)) == 0 and uncapped[49] > 2.3  # what it was before
    assert suggest(rates, got)["minimum"] == pytest.approx(rates[49] / 10)


def test_valley_on_a_slowly_creeping_flat_part_sits_halfway_from_the_start():
    # Why the valley is not the default: when the flat part creeps down (Adam at tiny
    # rates), the longest decreasing run starts at the first point, and the valley lands
    # at the middle of [start, minimum] in log(rate): here decades below the descent.
    n = 61
    rates = list(np.logspace(-7, -1, n))  # ten points a decade
    creep = list(2.3 - 1e-3 * np.arange(40))  # 1e-7 … 1e-3: tiny, steady decline
    curve = creep + list(np.linspace(creep[-1], 0.5, 11))[1:] + [0.6 + 0.3 * k for k in range(11)]
    assert int(np.argmin(curve)) == 49
    index = valley(curve)
    # The longest decreasing run is 0..49 (50 points): fastai's start = 49 − 50 = −1,
    # sections = 50/3, index = −1 + 16 + 8 = 23, a rate of 10^(−7 + 2.3) ≈ 2e-5.
    assert index == -1 + int(50 / 3) + int(50 / 3 / 2) == 23
    got = suggest(rates, curve)
    assert got["valley"] == pytest.approx(rates[23])
    assert got["minimum"] == pytest.approx(rates[49] / 10)  # 10^(−2.1) / 10 ≈ 8e-4
    assert math.log10(got["minimum"] / got["valley"]) > 1.5


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"steps": 1}, ValueError, "steps"),
        ({"learning_rates": (0.0, 10.0)}, ValueError, "learning_rates"),
        ({"learning_rates": (1e-7, 1e-8)}, ValueError, "learning_rates"),
        ({"learning_rates": 1e-3}, TypeError, "learning_rates"),
        ({"learning_rates": (1e-7, "10")}, TypeError, "learning_rates"),
        ({"sweep": "log"}, ValueError, "sweep"),
        ({"stop_factor": 1.0}, ValueError, "stop_factor"),
        ({"seed": -1}, ValueError, "seed"),
        ({"steps": True}, TypeError, "steps"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, error, match):
    x, y = checks.regression()
    with pytest.raises(error, match=match):
        lr_find(checks.linear_model(), x, y, **kwargs)


def test_the_deprecated_keywords_still_work_for_one_release():
    x, y = checks.regression()
    new = lr_find(checks.linear_model(), x, y, steps=12, learning_rates=(1e-3, 1.0))
    with pytest.warns(DeprecationWarning, match="learning_rates=\\(first, last\\)"):
        old = lr_find(checks.linear_model(), x, y, steps=12, min_learning_rate=1e-3,
                      max_learning_rate=1.0)  # fmt: skip
    assert old.learning_rates == new.learning_rates and old.losses == new.losses
    with pytest.warns(DeprecationWarning, match="`smoothing` is deprecated"):
        smoothed = lr_find(checks.linear_model(), x, y, steps=12, learning_rates=(1e-3, 1.0),
                           smoothing=0.5)  # fmt: skip
    assert smoothed.losses == new.losses and smoothed.smoothed != new.smoothed
    with pytest.raises(ValueError, match="deprecated part of `learning_rates`"):
        lr_find(checks.linear_model(), x, y, learning_rates=(1e-3, 1.0), min_learning_rate=1e-4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_lr'"):
        lr_find(checks.linear_model(), x, y, max_lr=1.0)
    with pytest.raises(ValueError, match="smoothing"):
        with pytest.warns(DeprecationWarning):
            lr_find(checks.linear_model(), x, y, smoothing=1.0)


def test_an_uncompiled_model_is_refused():
    x, y = checks.regression()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compile"):
        lr_find(model, x, y)
    with pytest.raises(TypeError, match="model"):
        lr_find("model", x, y)


def test_jax_backend_runs_the_same_checks():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    code = "from tests.tuning import _lr_finder_checks as c; c.check_all(); print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"


def test_mirrored_strategy_sweeps_and_restores():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    x, y = checks.conditioned_regression(512)
    with strategy.scope():
        model = checks.linear_model()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    before = checks.state(model)
    result = lr_find(model, x, y, batch_size=64, steps=30, learning_rates=(1e-3, 10.0))
    assert result.stop_reason in ("diverged", "nonfinite")
    critical = checks.divergence_rate(x)
    assert all(rate < critical for rate in result.suggestions.values())
    for a, b in zip(before, checks.state(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_dataset_of_batches_is_swept_without_batch_size():
    import tensorflow as tf

    x, y = checks.conditioned_regression(512)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)  # 4 batches, repeated
    model = checks.linear_model()
    before = checks.state(model)
    result = lr_find(model, dataset, steps=40, learning_rates=(1e-3, 10.0))
    assert result.stop_reason in ("diverged", "nonfinite")
    assert all(rate < checks.divergence_rate(x) for rate in result.suggestions.values())
    for a, b in zip(before, checks.state(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_callback_used_directly_refuses_a_schedule_clearly():
    model = checks.linear_model()
    model.compile(keras.optimizers.SGD(CosineAnnealing(0.1, 100)), loss="mse")
    x, y = checks.regression()
    with pytest.raises(ValueError, match="lr_find"):
        model.fit(x, y, epochs=2, steps_per_epoch=1, verbose=0,
                  callbacks=[LearningRateRangeTest(1e-3, 1.0, 2)])  # fmt: skip


def test_the_callback_used_directly_sweeps_a_float_rate():
    model = checks.linear_model()
    x, y = checks.regression()
    test = LearningRateRangeTest(1e-3, 1e-1, 3, stop_factor=1e9)
    model.fit(x, y, batch_size=8, epochs=3, steps_per_epoch=1, verbose=0, callbacks=[test])
    np.testing.assert_allclose(test.learning_rates, [1e-3, 1e-2, 1e-1], rtol=1e-9)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-1)
    assert len(test.losses) == 3 and test.stop_reason is None


def test_the_callback_deep_copies_and_round_trips():
    import copy

    from nnkit.testing import assert_round_trip

    test = LearningRateRangeTest(1e-4, 1.0, 8, sweep="linear", stop_factor=3.0, smoothing=0.5)
    twin = copy.deepcopy(test)
    assert twin.get_config() == test.get_config() and twin.rates() == test.rates()
    assert_round_trip(test)


def test_the_models_history_and_stop_flag_are_left_alone():
    x, y = checks.regression()
    model = checks.linear_model()
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    lr_find(model, x, y, batch_size=8, steps=10)
    assert model.history is history and model.stop_training is False

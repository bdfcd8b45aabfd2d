"""MixUp / CutMix: the mixed batch and the soft-target loss against numpy closed forms."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.models import MixUp, SharpnessAwareMinimization, mlp
from tests.distribute._mirrored import mirrored_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = 3


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _data(rows=8, features=4):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(rows, features)).astype("float32")
    return x, rng.integers(0, CLASSES, size=(rows,)).astype("int32")


def _linear():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(CLASSES)])
    rng = np.random.default_rng(5)
    model.set_weights(
        [rng.normal(size=(4, CLASSES)).astype("float32"), np.zeros(CLASSES, "float32")]
    )
    return model


def soft_cross_entropy(logits, soft):
    z = np.asarray(logits, "float64")
    log_p = z - z.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    return -(soft * log_p).sum(-1)


@pytest.mark.parametrize(
    "shape", [(8, 4), (8, 3, 5), (8, 2, 3, 2)], ids=["rank2", "rank3", "rank4"]
)
def test_mixed_batch_is_the_convex_combination(shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    y = np.arange(8)
    mixed = MixUp(_linear(), alpha=0.4, seed=3)
    x_mixed, targets, weights = mixed.mix(x, y)
    lam, partner = float(targets.weight), np.asarray(targets.second)
    assert 0.0 < lam < 1.0 and sorted(partner.tolist()) == list(range(8))
    np.testing.assert_allclose(x_mixed, lam * x + (1 - lam) * x[partner], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(targets.first, y)
    assert weights is None and targets.second_sample_weight is None


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.5])
def test_lambda_follows_beta_alpha_alpha(alpha):
    """The λ sampler against scipy's Beta(α, α) CDF (Kolmogorov–Smirnov) and its moments."""
    from scipy import stats

    from nnkit.models import _mixing

    n = 20000
    draws = np.asarray(_mixing.beta((n,), alpha, keras.random.SeedGenerator(3)), "float64")
    assert np.all((draws >= 0) & (draws <= 1))
    # float32 cannot resolve λ within 6e-8 of 1 (2 % of Beta(0.2, 0.2)'s mass rounds to 1.0),
    # so the CDF is compared on the lower half, λ < 1/2, where it is 2·F(λ) by symmetry.
    lower = draws[draws < 0.5]
    assert abs(len(lower) / n - 0.5) < 4 * np.sqrt(0.25 / n)
    cdf = stats.beta(alpha, alpha).cdf
    assert stats.kstest(lower, lambda t: 2 * cdf(t)).pvalue > 1e-3
    variance = 1 / (4 * (2 * alpha + 1))
    assert abs(draws.mean() - 0.5) < 4 * np.sqrt(variance / n)
    assert draws.var() == pytest.approx(variance, rel=0.05)


def test_sparse_labels_become_soft_targets_in_the_loss():
    """λ·CE(y) + (1−λ)·CE(y_π) = CE against λ·onehot(y) + (1−λ)·onehot(y_π), the user's loss kept."""
    x, y = _data()
    mixed = MixUp(_linear(), alpha=1.0, seed=7)
    mixed.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_mixed, targets, _ = mixed.mix(x, y)
    lam, second = float(targets.weight), np.asarray(targets.second)  # y_π
    logits = mixed(x_mixed)
    soft = lam * np.eye(CLASSES)[y] + (1 - lam) * np.eye(CLASSES)[second]
    got = float(mixed.compute_loss(x_mixed, targets, logits))
    assert got == pytest.approx(soft_cross_entropy(logits, soft).mean(), rel=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_fit_trains_on_the_mixed_batch_with_soft_targets(jit_compile):
    """With SGD(0), fit's loss is the soft-target CE of the batch mixed with the same draws."""
    x, y = _data()
    draws = MixUp(_linear(), alpha=1.0, seed=11)  # the same seed: the same λ and π
    mix = tf.function(lambda: draws.mix(x, np.arange(8)), jit_compile=jit_compile)
    _, targets, _ = mix()  # labels 0…7: targets.second is π itself (XLA draws differ)
    lam, partner = float(targets.weight), np.asarray(targets.second)
    model = _linear()
    mixed = MixUp(model, alpha=1.0, seed=11)
    mixed.compile(
        keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    history = mixed.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    logits = model.predict(lam * x + (1 - lam) * x[partner], verbose=0)
    soft = lam * np.eye(CLASSES)[y] + (1 - lam) * np.eye(CLASSES)[y[partner]]
    assert history.history["loss"][0] == pytest.approx(
        soft_cross_entropy(logits, soft).mean(), rel=1e-5
    )
    hits = logits.argmax(-1)
    majority = y if lam >= 0.5 else y[partner]  # metrics see the label with more weight
    want_accuracy = (hits == majority).mean()
    assert history.history["accuracy"][0] == pytest.approx(want_accuracy, rel=1e-5)


def test_cutmix_pastes_a_box_and_weighs_by_the_area_left():
    x = np.arange(4, dtype="float32")[:, None, None, None] * np.ones((4, 6, 6, 2), "float32")
    cutmix = MixUp(mlp(8, [4]), alpha=1.0, mode="cutmix", seed=2)
    for _ in range(5):
        x_mixed, targets, _ = cutmix.mix(x, np.arange(4))
        lam, partner = float(targets.weight), np.asarray(targets.second)
        x_mixed = np.asarray(x_mixed)
        for i in range(4):
            own = x_mixed[i] == i
            assert np.all(own | (x_mixed[i] == partner[i]))
            if partner[i] != i:
                assert own.mean() == pytest.approx(lam, abs=1e-6)  # λ = 1 − box area


def test_sample_weights_follow_their_rows():
    x, y = _data()
    weights = np.linspace(0.5, 2.0, 8).astype("float32")
    _, targets, w = MixUp(_linear(), seed=1).mix(x, np.arange(8), weights)
    np.testing.assert_array_equal(w, weights)
    np.testing.assert_allclose(targets.second_sample_weight, weights[np.asarray(targets.second)])


def test_mirrored_strategy_trains_and_matches_the_per_replica_closed_form():
    """Each replica mixes its own half of the global batch with the same draws."""
    x, y = _data(rows=16)
    strategy = mirrored_strategy()
    with strategy.scope():
        model = _linear()
        mixed = MixUp(model, alpha=1.0, seed=11)
        mixed.compile(
            keras.optimizers.SGD(0.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
    history = mixed.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    _, targets, _ = MixUp(_linear(), alpha=1.0, seed=11).mix(x[:8], np.arange(8))
    lam, partner = float(targets.weight), np.asarray(targets.second)
    losses = []
    for lo in (0, 8):
        xs, ys = x[lo : lo + 8], y[lo : lo + 8]
        logits = model.predict(lam * xs + (1 - lam) * xs[partner], verbose=0)
        soft = lam * np.eye(CLASSES)[ys] + (1 - lam) * np.eye(CLASSES)[ys[partner]]
        losses.append(soft_cross_entropy(logits, soft).mean())
    assert history.history["loss"][0] == pytest.approx(np.mean(losses), rel=1e-4)


def test_nests_with_sharpness_aware_minimization():
    x, y = _data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for wrapper in (
        SharpnessAwareMinimization(MixUp(_linear(), seed=0), rho=0.05),
        MixUp(SharpnessAwareMinimization(_linear(), rho=0.05), seed=0),
    ):
        wrapper.compile("sgd", loss=loss)
        history = wrapper.fit(x, y, batch_size=4, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert wrapper.predict(x, verbose=0).shape == (8, CLASSES)


def test_save_and_load_round_trip(tmp_path):
    x, y = _data()
    mixed = MixUp(_linear(), alpha=0.3, mode="mixup", seed=9)
    mixed.compile("sgd", loss="sparse_categorical_crossentropy")
    mixed.fit(x, y, epochs=1, verbose=0)
    mixed.save(tmp_path / "mix.keras")
    loaded = keras.saving.load_model(tmp_path / "mix.keras", safe_mode=True)
    assert isinstance(loaded, MixUp) and (loaded.alpha, loaded.seed) == (0.3, 9)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), mixed.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 0.0}, ValueError, "alpha=0"),
        ({"alpha": float("inf")}, ValueError, "alpha"),
        ({"alpha": True}, TypeError, "alpha"),
        ({"mode": "mosaic"}, ValueError, "mode"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        MixUp(_linear(), **kwargs)


def test_batch_errors_are_clear():
    mixed = MixUp(_linear())
    with pytest.raises(ValueError, match="no targets"):
        mixed.mix(np.ones((4, 4), "float32"), None)
    with pytest.raises(TypeError, match="floating"):
        mixed.mix(np.ones((4, 4), "int32"), np.arange(4))


JAX_CHECK = """
import keras, numpy as np
from nnkit.models import MixUp, SharpnessAwareMinimization
keras.utils.set_random_seed(0)
x = np.random.default_rng(4).normal(size=(8, 4)).astype("float32")
y = np.arange(8) % 3
inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
mixed = MixUp(inner, alpha=1.0, seed=11)
x_mixed, targets, _ = mixed.mix(x, np.arange(8))
lam, partner = float(targets.weight), np.asarray(targets.second)
assert np.allclose(x_mixed, lam * x + (1 - lam) * x[partner], atol=1e-6)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
for wrapper in (SharpnessAwareMinimization(MixUp(inner, seed=1), rho=0.05),):
    wrapper.compile("sgd", loss=loss)
    h = wrapper.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.all(np.isfinite(h.history["loss"])), h.history
print("ok")
"""


def test_jax_backend_mixes_and_trains():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-c", JAX_CHECK], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"

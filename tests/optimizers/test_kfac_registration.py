"""KFAC follows its model: unregistered, reloaded and foreign-model use is refused, never SGD."""

import keras
import numpy as np
import pytest

from nnkit.optimizers import KFAC


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, np.tanh(x[:, :2] - 0.5 * x[:, 2:]).astype("float32")


def _model(seed=0, name=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(2)],
        name=name,
    )


SETTINGS = dict(damping=1e-2, momentum=0.0, statistics_decay=0.0, refresh_every=1, kl_clip=None)


def test_an_unregistered_kfac_refuses_to_train_and_names_the_fix():
    x, y = _data()
    model = _model()
    before = model.get_weights()
    model.compile(optimizer=KFAC(0.1), loss="mse")
    with pytest.raises(ValueError, match=r"not registered.*optimizer\.register\(model\)"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_kfac_registered_with_another_model_names_both():
    x, y = _data()
    first, second = _model(name="model_a"), _model(seed=1, name="model_b")
    optimizer = KFAC(0.1, model=first)
    second.compile(optimizer=optimizer, loss="mse")
    with pytest.raises(ValueError, match=r"registered with model 'model_a'.*model_b/dense"):
        second.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # Registered again with the other model, it trains.
    optimizer.unregister()
    optimizer.register(second)
    second.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(optimizer.iterations) == 2


def test_a_reloaded_model_refuses_until_registered_then_takes_kfac_steps(tmp_path):
    # momentum=0 and statistics_decay=0 with a refresh every step: one step depends on the
    # weights only, so a reloaded KFAC and a fresh one must take the same step.
    x, y = _data(seed=2)
    model = _model(seed=3)
    model.compile(optimizer=KFAC(0.1, model=model, **SETTINGS), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "kfac.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.optimizer, KFAC) and loaded.optimizer.registered_layers == []
    with pytest.raises(ValueError, match="keras.saving.load_model"):
        loaded.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    weights = loaded.get_weights()
    loaded.optimizer.register(loaded)
    factors = [v for v in loaded.optimizer.variables if v.name.endswith("_g_factor")]
    before = [v.numpy() for v in factors]
    assert len(factors) == 2 and all(np.any(b != 0) for b in before)  # taken back from the file
    loaded.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for variable, value in zip(factors, before, strict=True):  # updated after the reload
        assert not np.allclose(variable.numpy(), value), variable.name

    fresh = _model(seed=4)
    fresh.set_weights(weights)
    fresh.compile(optimizer=KFAC(0.1, model=fresh, **SETTINGS), loss="mse")
    fresh.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for a, b in zip(fresh.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    sgd = _model(seed=4)
    sgd.set_weights(weights)
    sgd.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    sgd.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert not np.allclose(sgd.get_weights()[0], loaded.get_weights()[0], atol=1e-4)

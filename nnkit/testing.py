"""Test helpers for nnkit components (and for users' own components).

``assert_round_trip(obj)`` checks the whole serialization path that Keras
uses: ``get_config()`` is plain JSON, ``from_config(get_config())`` gives an
equal config, and ``serialize_keras_object`` / ``deserialize_keras_object``
rebuild it with no ``custom_objects``. ``assert_saved_in_model(schedule)``
checks that a schedule survives ``model.save()`` and
``keras.saving.load_model(..., safe_mode=True)``.

These helpers raise ``AssertionError`` explicitly (never a bare ``assert``,
which ``python -O`` strips).
"""

import json
import os
import tempfile

import keras
import numpy as np

from nnkit._keras import optimizer as keras_optimizer


def _fail(message):
    raise AssertionError(message)


def assert_json_plain(config, where="config", *, exact=True):
    """Fail unless ``config`` survives ``json.dumps``/``json.loads`` (unchanged if ``exact``).

    ``exact=False`` allows the changes JSON makes to tuples (lists), as in the
    ``build_config`` that Keras adds when it serializes a built layer.
    """
    try:
        text = json.dumps(config)
    except TypeError as error:
        _fail(f"{where} is not JSON-serializable: {error}. Got: {config!r}")
    if exact and json.loads(text) != config:
        _fail(f"{where} changes through JSON (tuples or non-str keys?). Got: {config!r}")
    return text


def assert_round_trip(obj):
    """Config -> JSON -> ``from_config`` -> equal config; and Keras (de)serialization.

    Returns the object rebuilt by ``deserialize_keras_object``.
    """
    config = obj.get_config()
    text = assert_json_plain(config, f"{type(obj).__name__}.get_config()")
    rebuilt = type(obj).from_config(json.loads(text))
    if rebuilt.get_config() != config:
        _fail(
            f"{type(obj).__name__}.from_config(get_config()) changed the config:\n"
            f"  before: {config!r}\n  after:  {rebuilt.get_config()!r}"
        )
    serialized = keras.saving.serialize_keras_object(obj)
    assert_json_plain(serialized, "serialize_keras_object(...)", exact=False)
    registered = keras.saving.get_registered_name(type(obj))
    if not registered.startswith("nnkit>"):
        _fail(f"{type(obj).__name__} is not registered with package='nnkit' ({registered!r}).")
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    if type(restored) is not type(obj) or restored.get_config() != config:
        _fail(
            f"deserialize_keras_object did not rebuild {type(obj).__name__}: "
            f"got {type(restored).__name__} with {restored.get_config()!r}"
        )
    return restored


def _tiny_model(optimizer):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    return model


def assert_saved_in_model(schedule, steps=(0, 1, 10, 100, 1000)):
    """A model whose optimizer uses ``schedule`` survives save/load with ``safe_mode=True``.

    Compares the reloaded schedule's config and its values at ``steps``.
    Returns the reloaded model.
    """
    model = _tiny_model(keras.optimizers.SGD(learning_rate=schedule))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    original = keras_optimizer.learning_rate_object(model.optimizer)
    reloaded = keras_optimizer.learning_rate_object(loaded.optimizer)
    if type(reloaded) is not type(original):
        _fail(f"Reloaded learning rate is {type(reloaded).__name__}, not {type(original).__name__}")
    if reloaded.get_config() != original.get_config():
        _fail(f"Reloaded schedule config differs: {reloaded.get_config()!r}")
    before = [float(original(s)) for s in steps]
    after = [float(reloaded(s)) for s in steps]
    if not np.allclose(before, after, rtol=1e-6, atol=0):
        _fail(f"Reloaded schedule values differ at steps {steps}: {before} vs {after}")
    if int(loaded.optimizer.iterations.numpy()) != int(model.optimizer.iterations.numpy()):
        _fail("Optimizer iterations were not restored.")
    return loaded

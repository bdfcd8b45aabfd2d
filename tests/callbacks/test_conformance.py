"""Shared tests over every public nnkit callback (discovered from ``nnkit.callbacks``)."""

import copy
import inspect
import os

import keras
import numpy as np
import pytest

import nnkit.callbacks as C
from nnkit.schedules import CosineAnnealing
from nnkit.testing import assert_round_trip
from tests.examples import ABSTRACT, examples_in

EXAMPLES = examples_in("callbacks")
CALLBACKS = sorted(
    name
    for name in C.__all__
    if inspect.isclass(getattr(C, name))
    and issubclass(getattr(C, name), keras.callbacks.Callback)
    and f"callbacks.{name}" not in ABSTRACT
)


def _example(name, tmp_path):
    callback = EXAMPLES[name]()
    for attr in ("backup_dir", "log_dir"):  # keep files inside tmp_path
        if getattr(callback, attr, None):
            config = callback.get_config()
            config[attr] = str(tmp_path / attr)
            callback = type(callback).from_config(config)
    if getattr(callback, "filepath", None):  # ModelCheckpoint's files
        config = callback.get_config()
        config["filepath"] = str(tmp_path / "filepath" / os.path.basename(config["filepath"]))
        callback = type(callback).from_config(config)
    return callback


def _fit(callbacks, epochs=3, jit_compile=False):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], "float32"))[:, None]
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, "relu"), keras.layers.Dense(1)]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(CosineAnnealing(0.05, epochs * 4)),
        loss="mse",
        jit_compile=jit_compile,
    )
    history = model.fit(
        x, y, batch_size=16, epochs=epochs, validation_split=0.25, callbacks=callbacks, verbose=0
    )
    return model, history


def test_every_callback_has_an_example():
    assert sorted(EXAMPLES) == CALLBACKS


def _companions(name, tmp_path):
    """The callbacks ``name`` needs beside it in a run (PreemptionSave stops towards a backup,
    ExceptionSave saves into one)."""
    if name in ("PreemptionSave", "ExceptionSave"):
        return [C.BackupAndRestore(str(tmp_path / "companion_backup"))]
    return []


@pytest.mark.parametrize("name", CALLBACKS)
def test_config_round_trip(name, tmp_path):
    assert_round_trip(_example(name, tmp_path))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("name", CALLBACKS)
def test_works_in_a_compiled_fit_and_deep_copies_before_and_after(name, jit_compile, tmp_path):
    callback = _example(name, tmp_path)
    before = copy.deepcopy(callback)
    assert before.get_config() == callback.get_config()
    model, history = _fit([callback, *_companions(name, tmp_path)], jit_compile=jit_compile)
    assert np.all(np.isfinite(history.history["loss"]))
    after = copy.deepcopy(callback)
    assert after.model is None and callback.model is model
    assert after.get_config() == callback.get_config()
    # A copy runs a fresh fit of its own (keras-tuner reuses copies across trials).
    _fit([after, *_companions(name, tmp_path)], jit_compile=jit_compile)


@pytest.mark.parametrize("name", CALLBACKS)
def test_reusable_across_fits(name, tmp_path):
    """``on_train_begin`` resets per-run state: a second fit with the same instance works."""
    callback = _example(name, tmp_path)
    _fit([callback, *_companions(name, tmp_path)], epochs=2)
    _, history = _fit([callback, *_companions(name, tmp_path)], epochs=2)
    assert len(history.history["loss"]) >= 1


def _plain(state):
    """``state`` with numpy arrays as nested lists, for comparison."""
    if isinstance(state, dict):
        return {key: _plain(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return [_plain(value) for value in state]
    if isinstance(state, np.ndarray):
        return {"array": state.tolist(), "dtype": str(state.dtype)}
    return state


STATEFUL = [name for name in CALLBACKS if issubclass(getattr(C, name), C.StatefulCallback)]


@pytest.mark.parametrize("name", STATEFUL)
def test_state_round_trips_into_a_fresh_instance(name, tmp_path):
    """After a fit, ``get_state`` restored into a fresh copy (``set_state``) gives it back."""
    callback = _example(name, tmp_path)
    _fit([callback, *_companions(name, tmp_path)], epochs=2)
    state = callback.get_state()
    fresh = type(callback).from_config(callback.get_config())
    fresh.set_state(copy.deepcopy(state))
    assert _plain(fresh.get_state()) == _plain(state)

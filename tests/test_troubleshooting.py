"""docs/troubleshooting.md quotes the messages nnkit really gives.

Each ``text`` block of the page is the message of one trigger below, in the
page's order: the trigger reproduces the situation as a user meets it and
returns the message (``"Type: message"`` for an error or a warning). ``…`` in
the page matches any text; whitespace is compared loosely, so the page can wrap
the lines.
"""

import math
import pathlib
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnkit.callbacks import EarlyStopping, GradientNormMonitor, LearningRateMonitor
from nnkit.distribute import per_replica_batch_size
from nnkit.schedules import CosineAnnealing
from nnkit.tuning import sensitivity_report, tune
from nnkit.tuning._study import study_header, write_study

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.normal(size=(32, 1)).astype("float32")


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="dense")], name="model")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def _error(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001  (any error: its message is the point)
        return f"{type(error).__name__}: {error}"
    raise AssertionError("no error was raised")


def _warning(fn, category):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    messages = [f"{w.category.__name__}: {w.message}" for w in caught if w.category is category]
    assert messages, [str(w.message) for w in caught]
    return messages[-1]


def _fit(callbacks, x=X, **kwargs):
    model = _model()
    return model.fit(x, Y, epochs=1, batch_size=8, verbose=0, callbacks=callbacks, **kwargs)


def _nan_x():
    x = X.copy()
    x[:8] = np.nan  # the first batch (fit with shuffle=False): a NaN in the data
    return x


def missing_key():
    return _error(lambda: _fit([EarlyStopping("val_los")], validation_data=(X, Y)))


def unknown_direction():
    return _error(lambda: _fit([LearningRateMonitor(), EarlyStopping("lr")]))


def nan_gradients():
    monitor = GradientNormMonitor(sample_every=1)
    return _warning(lambda: _fit([monitor], x=_nan_x(), shuffle=False), RuntimeWarning)


def nan_stop(capsys):
    monitor = GradientNormMonitor(sample_every=1, on_nonfinite="stop")
    _fit([monitor], x=_nan_x(), shuffle=False)
    assert monitor.stop_message in capsys.readouterr().out  # printed, not only stored
    return monitor.stop_message


def nan_skip():
    monitor = GradientNormMonitor(sample_every=1, on_nonfinite="skip")
    return _warning(lambda: _fit([monitor], x=_nan_x(), shuffle=False), RuntimeWarning)


def unknown_class():
    config = {"class_name": "NoSuchLoss", "config": {}, "module": None}
    config["registered_name"] = "nnkit>NoSuchLoss"
    return _error(lambda: keras.saving.deserialize_keras_object(config))


def uncompiled_build(tmp_path):
    def build(hp):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(hp.Int("units", 1, 4))])

    return _error(
        lambda: tune(
            build, X, Y, validation_data=(X, Y), directory=tmp_path / "study", max_trials=1,
            epochs=1, seed=0,
        )
    )  # fmt: skip


def tiny_sweep(tmp_path):
    lrs = np.geomspace(1e-4, 1e-1, 12)
    trials = [
        {"trial_id": f"{i:02d}", "status": "completed", "hyperparameters": {"lr": float(lr)},
         "executions": [], "objective": (math.log10(lr) + 2.5) ** 2}
        for i, lr in enumerate(lrs)
    ]  # fmt: skip
    spec = {"name": "lr", "type": "float", "min": 1e-4, "max": 1e-1, "sampling": "log"}
    write_study(tmp_path / "sweep", study_header([spec]), trials)
    text = sensitivity_report(tmp_path / "sweep", n_bootstrap=0, plots=False).path.read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("- Too few trials")]
    return line[2:]


def uneven_batch():
    mirrored = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    return _error(lambda: per_replica_batch_size(33, mirrored))


def bad_argument():
    return _error(lambda: CosineAnnealing(1e-3, total_steps=0))


TRIGGERS = [
    missing_key,
    unknown_direction,
    nan_gradients,
    nan_stop,
    nan_skip,
    unknown_class,
    uncompiled_build,
    tiny_sweep,
    uneven_batch,
    bad_argument,
]


def _quoted():
    return re.findall(r"^```text\n(.*?)^```", PAGE.read_text(encoding="utf-8"), re.M | re.S)


def _pattern(quoted):
    parts = [re.escape(part) for part in " ".join(quoted.split()).split("…")]
    return re.compile(".+?".join(parts).replace(r"\ ", r"\s+"), re.S)


def test_one_trigger_per_quoted_message():
    assert len(_quoted()) == len(TRIGGERS)


@pytest.mark.parametrize("index", range(len(TRIGGERS)), ids=[t.__name__ for t in TRIGGERS])
def test_the_page_quotes_the_real_message(index, tmp_path, capsys):
    trigger = TRIGGERS[index]
    arguments = {"tmp_path": tmp_path, "capsys": capsys}
    names = trigger.__code__.co_varnames[: trigger.__code__.co_argcount]
    message = trigger(**{name: arguments[name] for name in names})
    quoted = _quoted()[index]
    assert _pattern(quoted).match(" ".join(message.split())), (
        f"docs/troubleshooting.md, block {index + 1}, quotes\n{quoted}\nbut nnkit says\n{message}"
    )


def test_the_page_is_in_the_nav():
    nav = (PAGE.parents[1] / "mkdocs.yml").read_text()
    assert "troubleshooting.md" in nav

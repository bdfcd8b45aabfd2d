"""A monitored ``fit`` raises no warning of its own (issue 15 #6).

Every numpy-2 ``DeprecationWarning`` counts here, whatever module it is
attributed to: the filter is reset to "error" inside the test, so a host
read nnkit makes through ``keras.ops.convert_to_numpy`` fails it.
"""

import warnings

import keras
import numpy as np

from nnkit.callbacks import (
    BackupAndRestore,
    EarlyStopping,
    GradientNormMonitor,
    LearningRateMonitor,
    ReduceLROnPlateau,
)
from nnkit.schedules import CosineAnnealing


def test_a_monitored_fit_warns_nothing(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x @ rng.normal(size=(4, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.SGD(CosineAnnealing(0.05, 40)), loss="mse")
    callbacks = [
        BackupAndRestore(str(tmp_path / "backup")),
        EarlyStopping(patience=3, restore_best_weights=True),
        ReduceLROnPlateau(patience=1),
        LearningRateMonitor(sample_every=2),
        GradientNormMonitor(sample_every=2),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x, y, batch_size=16, epochs=4, validation_split=0.25, callbacks=callbacks, verbose=0
        )
    assert [str(w.message) for w in caught] == []
    assert {"lr", "grad_norm", "val_loss"} <= set(history.history)

"""One seeded run for ExceptionSave's tests, in this process or as a child process.

``python -m tests.callbacks._exception_run BACKUP_DIR OUT.npz FAIL_AT``: a
small model with dropout trains on a ``PyDataset`` of 6 batches for 4 epochs
with ``BackupAndRestore``, ``ExceptionSave`` and ``EarlyStopping``; the data
raises ``OSError`` at global step ``FAIL_AT`` (``-1``: never). It writes the
final weights and the epoch losses to ``OUT.npz``; a failed run exits with
status 3.
"""

import contextlib
import os
import sys

import keras
import numpy as np

from nnkit.callbacks import BackupAndRestore, EarlyStopping, ExceptionSave

BATCHES, EPOCHS = 6, 4


class Flaky(keras.utils.PyDataset):
    """Batch ``i`` of every epoch is a fixed function of ``i``; raises at global step ``fail_at``."""

    def __init__(self, fail_at):
        super().__init__()
        self.fail_at, self.calls = fail_at, 0
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(BATCHES, 8, 4)).astype("float32")
        self.y = (self.x @ np.array([1.0, -2.0, 0.5, 0.0], "float32"))[..., None]

    def __len__(self):
        return BATCHES

    def __getitem__(self, index):
        if self.calls == self.fail_at:
            raise OSError(f"the data source went away at step {self.calls}")
        self.calls += 1
        return self.x[index], self.y[index]


def run(backup_dir, fail_at=-1, accumulation=None, strategy=None):
    """Train; return ``(final weights, {epoch: loss})`` (raises what the data raises).

    ``strategy``: a ``tf.distribute`` strategy to build and compile under, or ``None``.
    """
    keras.backend.clear_session()  # the same variable paths as a fresh process (seed generators)
    keras.utils.set_random_seed(0)
    with contextlib.nullcontext() if strategy is None else strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(16, "relu"),
                keras.layers.Dropout(0.2),
                keras.layers.Dense(1),
            ]
        )
        optimizer = keras.optimizers.Adam(0.01, gradient_accumulation_steps=accumulation)
        model.compile(optimizer, loss="mse", metrics=["mae"])
    callbacks = [
        BackupAndRestore(backup_dir),
        ExceptionSave(verbose=0),
        EarlyStopping("loss", patience=10),
    ]
    history = model.fit(
        Flaky(fail_at), epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks
    )
    losses = dict(zip(history.epoch, history.history["loss"], strict=True))
    return model.get_weights(), losses


def main(backup_dir, out, fail_at):
    try:
        weights, losses = run(backup_dir, int(fail_at))
    except Exception:
        # Exit at once, as a job script's failure would: a normal interpreter
        # exit can deadlock in TensorFlow's teardown of the failed tf.data
        # iterator (its prefetch thread waits for the GIL; seen once on a
        # loaded CI machine), and the backup is already written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3)
    epochs = sorted(losses)
    np.savez(out, *weights, epochs=np.array(epochs), losses=np.array([losses[e] for e in epochs]))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""One worker of the two-worker tests in ``test_multi_worker.py``, and their reference run.

As a script (``TF_CONFIG`` set for one worker of the cluster)::

    python _multi_worker_script.py OUT_DIR [--backup DIR] [--interrupt-after K]

it builds the strategy with ``nnkit.distribute.strategy("multiworker")``,
trains the small model below on the global batch and writes this worker's
final weights to ``OUT_DIR/<task type>-<index>.npz``. With ``--backup`` it
uses ``nnkit.callbacks.BackupAndRestore(DIR)``; with ``--interrupt-after K``
it raises at the begin of epoch ``K + 1`` (after the backup of epoch ``K``,
written once every callback of that epoch has run) and exits with
``INTERRUPTED``. The test imports ``train`` to compute the single-process
reference on the same global batches.
"""

import argparse
import json
import os
import sys

import keras
import numpy as np

SAMPLES, FEATURES, GLOBAL_BATCH, EPOCHS = 64, 4, 16, 4
INTERRUPTED = 3  # exit status of a run interrupted as asked


class Interrupted(Exception):
    """Raised by ``Interrupt`` to simulate a crash of the job."""


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch + 1:
            raise Interrupted(f"begin of epoch {epoch}")


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(FEATURES, 1))).astype("float32")
    return x, y


def train(strategy, *, backup_dir=None, interrupt_after=None):
    """Train under ``strategy`` (unshuffled global batches); return ``(model, history)``."""
    from nnkit.callbacks import BackupAndRestore, EarlyStopping
    from nnkit.distribute import input_pipeline

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((FEATURES,)), keras.layers.Dense(8, "tanh"), keras.layers.Dense(1)]
        )
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss="mse", metrics=["mae"])
    x, y = data()
    dataset = input_pipeline(x, y, global_batch_size=GLOBAL_BATCH, shuffle=False, strategy=strategy)
    callbacks = [EarlyStopping("loss", patience=EPOCHS)]  # stateful: its state is backed up
    if backup_dir is not None:
        callbacks.insert(0, BackupAndRestore(backup_dir))
    if interrupt_after is not None:
        callbacks.append(Interrupt(interrupt_after))
    history = model.fit(dataset, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
    return model, history


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--backup")
    parser.add_argument("--interrupt-after", type=int)
    args = parser.parse_args(argv)

    from nnkit.distribute import is_chief, strategy

    multi_worker = strategy("multiworker", verbose=0)  # applies fix_multi_worker_fit
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    name = f"{task['type']}-{task['index']}"
    try:
        model, history = train(
            multi_worker, backup_dir=args.backup, interrupt_after=args.interrupt_after
        )
    except Interrupted:
        return INTERRUPTED
    weights = model.get_weights()
    np.savez(os.path.join(args.out, f"{name}.npz"), *weights)
    summary = {
        "task": name,
        "chief": is_chief(multi_worker),
        "replicas": multi_worker.num_replicas_in_sync,
        "epochs": history.epoch,
        "loss": history.history["loss"],
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Train nnkit's MLP on scikit-learn's digits under a ``tf.distribute`` strategy.

The recipe shows the data-parallel route of ``nnkit.distribute`` end to end:

* ``nnkit.distribute.strategy``: the strategy for ``--strategy`` (``auto``
  picks it from the hardware and ``TF_CONFIG``; it logs what it chose and
  why), with Keras's multi-worker ``fit`` patched where needed
  (``fix_multi_worker_fit``);
* ``global_batch_size``: ``--per-replica-batch-size`` examples on each
  replica make the global batch that ``fit`` sees;
* ``scale_learning_rate``: the rate tuned at ``--base-batch-size`` scaled to
  the global batch (linear or square-root rule) with a gradual warmup;
* ``input_pipeline``: ``tf.data`` pipelines of global batches, sharded by
  example across workers;
* ``check``: the distribution readiness report, printed before ``fit``;
* ``worker_directory``: under several workers, only the chief writes to
  ``--out`` (the others write to a temporary directory, deleted at the end),
  and ``nnkit.callbacks.BackupAndRestore`` with ``--backup-dir``.

``--devices N`` splits the CPU into ``N`` logical devices before TensorFlow
starts, so ``--strategy mirrored`` (or ``auto``) trains on ``N`` replicas on
one machine, without GPUs. For several machines, run the same command on
each with its own ``TF_CONFIG`` and ``--strategy multiworker`` (or
``auto``); see docs/scaling-out.md.

It writes to ``--out`` (default ``runs/distributed_digits``)::

    metrics.json   test accuracy/loss, the strategy and why it was chosen, the
                   replicas, batch sizes and learning rates, the readiness
                   report, the loss and accuracy of every epoch, times, the
                   arguments

and its last line of stdout is a JSON summary. Run
``python recipes/distributed_digits.py --help`` for the options.
"""

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from nnkit.callbacks import BackupAndRestore  # noqa: E402
from nnkit.distribute import (  # noqa: E402
    check,
    global_batch_size,
    input_pipeline,
    is_chief,
    remove_worker_directory,
    scale_learning_rate,
    strategy,
    worker_directory,
)
from nnkit.models import mlp  # noqa: E402

NUM_CLASSES = 10
STRATEGIES = ("auto", "mirrored", "multiworker", "default")


def _widths(text):
    """``"128,64"`` -> ``[128, 64]`` (an argparse ``type``)."""
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 128,64, got {text!r}"
        ) from None
    if any(width < 1 for width in widths):
        raise argparse.ArgumentTypeError(f"every width must be >= 1, got {text!r}")
    return widths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="distributed_digits.py",
        description=(
            "Train nnkit's MLP on scikit-learn's digits under a tf.distribute strategy "
            "chosen by nnkit.distribute.strategy, with the global batch, learning-rate "
            "scaling, input pipeline and readiness check of nnkit.distribute."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="auto: TPU, then a multi-worker TF_CONFIG, then several devices, else default",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="split the CPU into this many logical devices (before TensorFlow starts) and "
        "mirror over them with --strategy mirrored or auto; for a demo on one machine",
    )
    parser.add_argument("--epochs", type=int, default=20, help="epochs to train")
    parser.add_argument(
        "--per-replica-batch-size",
        type=int,
        default=32,
        help="examples per replica per step; the global batch is this times the replicas",
    )
    parser.add_argument(
        "--base-batch-size",
        type=int,
        default=32,
        help="the global batch --learning-rate was tuned for",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=0.05,
        help="SGD (momentum 0.9) learning rate at --base-batch-size",
    )
    parser.add_argument(
        "--rule",
        choices=("linear", "sqrt"),
        default="linear",
        help="how the rate follows the global batch (Goyal et al. 2017: linear)",
    )
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=1,
        help="epochs of linear warmup from the base rate to the scaled one",
    )
    parser.add_argument(
        "--widths", type=_widths, default=[128, 64], help="hidden widths, comma-separated"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and shuffling")
    parser.add_argument(
        "--backup-dir",
        default=None,
        help="back up every epoch with nnkit.callbacks.BackupAndRestore there (a directory "
        "every worker can read) and resume from it after an interruption",
    )
    parser.add_argument("--out", default="runs/distributed_digits", help="output directory")
    parser.add_argument(
        "--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras fit verbosity"
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "per_replica_batch_size", "base_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.devices is not None:
        if args.devices < 1:
            parser.error(f"--devices must be >= 1, got {args.devices}")
        if args.strategy not in ("auto", "mirrored"):
            parser.error(
                f"--devices applies to --strategy auto or mirrored, got --strategy {args.strategy}"
            )
    if not 0 <= args.warmup_epochs < args.epochs:
        parser.error(f"--warmup-epochs must be in [0, --epochs), got {args.warmup_epochs}")
    if not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0, got {args.learning_rate}")
    return args


def split_cpu(count):
    """Split the CPU into ``count`` logical devices; return their names.

    TensorFlow fixes its devices when it first initializes them, so this must
    run before anything creates a tensor or a strategy.
    """
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError as error:  # already initialized
        raise SystemExit(
            f"--devices {count}: TensorFlow has already initialized its devices ({error}); "
            "run the recipe as a fresh process"
        ) from None
    return [f"CPU:{i}" for i in range(count)]


def load_data(seed=0):
    """Digits split 75/25 (stratified), standardized with the training statistics."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype("float32"), y, test_size=0.25, stratify=y, random_state=seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0  # constant pixels (the digits' borders) stay at 0
    return {
        "train": (((x_train - mean) / std).astype("float32"), y_train.astype("int32")),
        "test": (((x_test - mean) / std).astype("float32"), y_test.astype("int32")),
    }


def main(argv=None):
    """Run the recipe; returns the JSON summary printed last."""
    start = time.perf_counter()
    args = parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("nnkit").setLevel(logging.INFO)  # strategy() says what it chose and why
    devices = split_cpu(args.devices) if args.devices is not None else None
    # Create the strategy first: MultiWorkerMirroredStrategy must exist before any tensor.
    distribution = strategy(args.strategy, devices=devices)
    replicas = distribution.num_replicas_in_sync
    keras.utils.set_random_seed(args.seed)

    data = load_data(args.seed)
    x_train, y_train = data["train"]
    batch = global_batch_size(args.per_replica_batch_size, distribution)
    train = input_pipeline(
        x_train, y_train, global_batch_size=batch, seed=args.seed, strategy=distribution
    )
    steps_per_epoch = int(train.cardinality())
    warmup_steps = args.warmup_epochs * steps_per_epoch
    test = input_pipeline(
        *data["test"], global_batch_size=batch, shuffle=False, drop_remainder=False,
        strategy=distribution,
    )  # fmt: skip

    with distribution.scope():
        model = mlp(x_train.shape[1], args.widths, output_units=NUM_CLASSES, name="digits_mlp")
        learning_rate = scale_learning_rate(
            args.learning_rate, args.base_batch_size, batch, rule=args.rule,
            warmup_steps=warmup_steps,
        )  # fmt: skip
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    report = check(model, distribution)  # raises on a configuration that would fail
    print(report)

    out = worker_directory(args.out, distribution)  # --out on the chief only
    callbacks = [] if args.backup_dir is None else [BackupAndRestore(args.backup_dir)]
    train_start = time.perf_counter()
    history = model.fit(
        train,
        epochs=args.epochs,
        validation_data=test,
        shuffle=False,  # the pipeline shuffles
        callbacks=callbacks,
        verbose=args.verbose,
    )
    train_seconds = time.perf_counter() - train_start
    test_loss, test_accuracy = model.evaluate(test, verbose=0)

    scaled_rate = float(np.asarray(learning_rate(warmup_steps)))
    summary = {
        "strategy": type(distribution).__name__,
        "replicas": replicas,
        "chief": is_chief(distribution),
        "per_replica_batch_size": args.per_replica_batch_size,
        "global_batch_size": batch,
        "steps_per_epoch": steps_per_epoch,
        "base_learning_rate": args.learning_rate,
        "learning_rate": scaled_rate,
        "warmup_steps": warmup_steps,
        "readiness": report.to_dict(),
        "epochs_run": len(history.epoch),
        "loss": [float(value) for value in history.history["loss"]],
        "accuracy": [float(value) for value in history.history["accuracy"]],
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - start, 3),
        "versions": {"keras": keras.__version__, "numpy": np.__version__},
        "args": vars(args),
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    remove_worker_directory(args.out, distribution)  # a non-chief worker's copy only
    written = (
        f"wrote metrics.json to {os.path.abspath(args.out)}"
        if summary["chief"]
        else "the chief writes metrics.json"
    )
    print(
        f"test accuracy {test_accuracy:.4f} after {len(history.epoch)} epochs on {replicas} "
        f"replica(s) of {summary['strategy']} (global batch {batch}, learning rate "
        f"{scaled_rate:g}); {written}"
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])

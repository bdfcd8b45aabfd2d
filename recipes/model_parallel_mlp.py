"""Train nnkit's MLP with its large kernels split over several devices (JAX backend).

Model parallelism is for a model whose parameters (with the optimizer's two
Adam slots per parameter) do not fit on one device. The recipe shows the
nnkit route on Keras's JAX-backend distribution:

* ``nnkit.distribute.device_mesh``: a ``(batch, model)`` mesh over the
  available devices (``--model-parallelism`` of them on the model axis);
* ``nnkit.distribute.mlp_layout_map``: one ``LayoutMap`` key per kernel of
  ``nnkit.models.mlp`` with at least ``--min-size`` entries, written from the
  kernels' real variable paths (the keys are full-match regular expressions);
* ``nnkit.distribute.model_parallel``: the ``ModelParallel`` distribution
  under whose scope the model is built, compiled and trained;
* ``nnkit.distribute.verify_layout``: the check that every key placed its
  kernel as intended.

It trains on scikit-learn's digits, prints where each kernel lives (its mesh
axes and the block each device holds) and the largest number of parameter
and optimizer bytes on one device, then trains the same model unsharded on
one device from the same seed and compares losses and weights. The last
line of stdout is a JSON summary.

Without an accelerator the devices are virtual CPU devices: the recipe sets
``JAX_NUM_CPU_DEVICES=4`` (and ``KERAS_BACKEND=jax``) unless they are already
set, before JAX starts. On the TensorFlow backend ``model_parallel`` refuses
to run (``keras.distribution`` is ignored there).

Run ``python recipes/model_parallel_mlp.py --help`` for the options.
"""

import argparse
import collections
import contextlib
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")  # virtual CPU devices, read when JAX starts
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from nnkit.distribute import (  # noqa: E402
    device_mesh,
    mlp_layout_map,
    model_parallel,
    verify_layout,
)
from nnkit.models import mlp  # noqa: E402

NUM_CLASSES = 10


def _widths(text):
    """``"1024,1024"`` -> ``[1024, 1024]`` (an argparse ``type``)."""
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 1024,1024, got {text!r}"
        ) from None
    if any(width < 1 for width in widths):
        raise argparse.ArgumentTypeError(f"every width must be >= 1, got {text!r}")
    return widths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="model_parallel_mlp.py",
        description=(
            "Train nnkit's MLP on digits with its large kernels sharded over the devices "
            "(keras.distribution.ModelParallel, JAX backend), and compare with an unsharded "
            "run from the same seed."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model-parallelism",
        type=int,
        default=None,
        help="devices on the model axis (the rest split the batch); default: all devices",
    )
    parser.add_argument(
        "--widths", type=_widths, default=[1024, 1024], help="hidden widths, comma-separated"
    )
    parser.add_argument("--residual", action="store_true", help="residual blocks")
    parser.add_argument(
        "--min-size",
        type=int,
        default=2**16,
        help="shard the kernels with at least this many entries; the others are replicated",
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each run")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout rate in every block")
    parser.add_argument("--seed", type=int, default=0, help="seed of both runs")
    parser.add_argument(
        "--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras fit verbosity"
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "min_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.model_parallelism is not None and args.model_parallelism < 1:
        parser.error(f"--model-parallelism must be >= 1, got {args.model_parallelism}")
    if not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0, got {args.learning_rate}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    return args


def load_data(seed=0):
    """Digits split 75/25 (stratified), standardized with the training statistics."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype("float32"), y, test_size=0.25, stratify=y, random_state=seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    return {
        "train": (((x_train - mean) / std).astype("float32"), y_train.astype("int32")),
        "test": (((x_test - mean) / std).astype("float32"), y_test.astype("int32")),
    }


def train(args, data, distribution=None):
    """Build, compile and fit the MLP (under ``distribution``'s scope if given)."""
    keras.utils.set_random_seed(args.seed)
    scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
    with scope:
        model = mlp(
            data["train"][0].shape[1],
            args.widths,
            dropout=args.dropout,
            residual=args.residual,
            output_units=NUM_CLASSES,
            name="model_parallel_mlp",
        )
        model.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        history = model.fit(
            *data["train"],
            epochs=args.epochs,
            batch_size=args.batch_size,
            shuffle=False,  # the same batches in both runs
            verbose=args.verbose,
        )
        _, accuracy = model.evaluate(*data["test"], verbose=0)
    return model, history.history["loss"], float(accuracy)


def placement(model):
    """``{kernel path: (shape, mesh axes, shape of the block on each device)}``."""
    table = {}
    for variable in model.weights:
        if not variable.path.endswith("kernel"):
            continue
        sharding = variable.value.sharding
        spec = getattr(sharding, "spec", None)
        axes = tuple(spec) + (None,) * (len(variable.shape) - len(spec)) if spec is not None else ()
        table[variable.path] = (
            tuple(variable.shape),
            axes,
            tuple(sharding.shard_shape(tuple(variable.shape))),
        )
    return table


def bytes_per_device(model):
    """The most bytes of model and optimizer variables held by one device."""
    held = collections.Counter()
    for variable in [*model.variables, *model.optimizer.variables]:
        for shard in variable.value.addressable_shards:
            held[str(shard.device)] += shard.data.nbytes
    return max(held.values())


def max_weight_difference(model_a, model_b):
    return max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(model_a.weights, model_b.weights, strict=True)
    )


def main(argv=None):
    """Run the recipe; returns the JSON summary printed last."""
    start = time.perf_counter()
    args = parse_args(argv)
    data = load_data(args.seed)
    devices = keras.distribution.list_devices()
    mesh = device_mesh(args.model_parallelism, devices=devices)
    input_dim = data["train"][0].shape[1]
    layout_map = mlp_layout_map(
        mesh,
        input_dim,
        args.widths,
        residual=args.residual,
        output_units=NUM_CLASSES,
        min_size=args.min_size,
    )
    distribution = model_parallel(layout_map)
    mesh_axes = dict(zip(mesh.axis_names, mesh.shape, strict=True))
    print(f"{len(devices)} devices ({', '.join(devices)}); mesh {mesh_axes}")

    sharded, sharded_loss, sharded_accuracy = train(args, data, distribution)
    placed = verify_layout(sharded, layout_map)
    print(f"{'kernel':<34} {'shape':>12} {'mesh axes':>18} {'block per device':>17}")
    table = placement(sharded)
    for path, (shape, axes, block) in table.items():
        print(f"{path:<34} {str(shape):>12} {str(axes):>18} {str(block):>17}")

    single, single_loss, single_accuracy = train(args, data)
    difference = max_weight_difference(sharded, single)
    sharded_bytes, single_bytes = bytes_per_device(sharded), bytes_per_device(single)
    print(
        f"parameters + optimizer state on the fullest device: {sharded_bytes / 2**20:.2f} MiB "
        f"sharded vs {single_bytes / 2**20:.2f} MiB on one device"
    )
    print(
        f"final training loss {sharded_loss[-1]:.6f} sharded vs {single_loss[-1]:.6f} "
        f"unsharded; largest weight difference {difference:.2e}; test accuracy "
        f"{sharded_accuracy:.4f} vs {single_accuracy:.4f}"
    )
    summary = {
        "backend": keras.backend.backend(),
        "devices": len(devices),
        "mesh": mesh_axes,
        "sharded_kernels": {path: list(axes) for path, axes in placed.items()},
        "replicated_kernels": [path for path in table if path not in placed],
        "bytes_per_device": {"sharded": sharded_bytes, "unsharded": single_bytes},
        "loss": {"sharded": sharded_loss, "unsharded": single_loss},
        "test_accuracy": {"sharded": sharded_accuracy, "unsharded": single_accuracy},
        "max_abs_weight_difference": difference,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "args": vars(args),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

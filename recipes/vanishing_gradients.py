"""Vanishing gradients, seen and diagnosed: a deep sigmoid MLP next to a deep ReLU + He + BN MLP.

The recipe trains two classifiers of the same depth on scikit-learn's digits,
side by side, each with ``nnkit.callbacks.GradientNormMonitor``, and prints
both gradient reports:

* ``sigmoid``: ``--depth`` hidden ``nnkit.layers.DenseBlock`` layers of
  ``--width`` sigmoid units, kernels drawn from ``N(0, 0.05²)``, no
  normalization: the textbook way to make gradients vanish. Every layer
  multiplies the backpropagated gradient by ``W·σ'`` with ``σ' ≤ 0.25`` and
  ``‖W‖`` small, so the early layers receive almost nothing;
* ``relu_he_bn``: ``nnkit.models.mlp`` with the same depth and width, ReLU,
  He-normal kernels (``nnkit.initializers.for_activation("relu")``) and
  batch normalization in every block.

Both see the same data, start from the same seed (the same shuffling), and
train with the same optimizer (SGD with momentum), loss (cross-entropy with
label smoothing 0.1) and number of epochs. The monitor samples the per-layer
gradient norms every 10 steps inside the compiled train step; at the end of
training its report flags the sigmoid model's early layers as *vanishing*
(with a suggestion naming the cause) and raises no flag for the other.

The data: the 1,797 digits images (8×8 pixels, 64 features), split once
(stratified, fixed seed) into 1,437 training and 360 test images and
standardized with the training statistics. Nothing is downloaded.

It writes a run directory (``--out``, default ``runs/vanishing``)::

    summary.json                       per model: test accuracy and loss, the
                                       flags raised, the vanishing layers,
                                       training seconds; wall time, the arguments
    gradient_report_<model>.txt        the report: per-layer table, flags, suggestions
    gradient_report_<model>.json       the same as JSON (``GradientReport.to_dict()``)
    gradient_heatmap_<model>.png       log10 gradient norm per layer over the steps

for ``<model>`` in ``sigmoid`` and ``relu_he_bn``.

Run ``python recipes/vanishing_gradients.py --help`` for the options.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from nnkit.callbacks import GradientNormMonitor  # noqa: E402
from nnkit.initializers import for_activation  # noqa: E402
from nnkit.layers import DenseBlock  # noqa: E402
from nnkit.models import mlp  # noqa: E402

NUM_CLASSES = 10
SPLIT_SEED = 0  # the split is fixed; --seed changes only the training randomness
TEST_FRACTION = 0.2
#: The sigmoid model's kernels: N(0, INIT_STDDEV²), whatever the width.
INIT_STDDEV = 0.05
LEARNING_RATE = 0.01
MOMENTUM = 0.9
BATCH_SIZE = 32
LABEL_SMOOTHING = 0.1
#: The two models, in the order they are trained and printed.
MODELS = ("sigmoid", "relu_he_bn")
DESCRIPTIONS = {
    "sigmoid": "sigmoid, RandomNormal(stddev={stddev:g}) kernels, no normalization",
    "relu_he_bn": "ReLU, He-normal kernels, batch normalization",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="vanishing_gradients.py",
        description=(
            "Train a deep sigmoid MLP with small random-normal weights and a ReLU + He + "
            "batch-norm MLP of the same depth on scikit-learn's digits, each with "
            "nnkit's GradientNormMonitor, and print and write both gradient reports."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=10,
        help="hidden layers of each model (gradients vanish from about 5 sigmoid layers on)",
    )
    parser.add_argument("--width", type=int, default=64, help="units of every hidden layer")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each model")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the weights and the shuffling (keras.utils.set_random_seed), "
        "set again before each model",
    )
    parser.add_argument("--out", default="runs/vanishing", help="output (run) directory")
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch",
    )
    args = parser.parse_args(argv)
    for name in ("depth", "width", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def load_data():
    """Digits split into train/test (stratified), standardized with train statistics.

    Returns ``{"train": (x, y), "test": (x, y)}``: float32 features and
    one-hot float32 labels (``CategoricalCrossentropy`` takes
    ``label_smoothing``).
    """
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype("float32"), y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # constant pixels (the digits' borders) stay at 0

    def prepare(features, labels):
        features = ((features - mean) / std).astype("float32")
        return features, keras.utils.to_categorical(labels, NUM_CLASSES).astype("float32")

    return {"train": prepare(x_train, y_train), "test": prepare(x_test, y_test)}


def build_model(name, num_features, depth, width):
    """The ``sigmoid`` or ``relu_he_bn`` model: ``depth`` blocks of ``width``, softmax output.

    ``relu_he_bn`` is ``nnkit.models.mlp``, which initializes kernels for the
    activation (He for ReLU). ``mlp`` does not take a kernel initializer, so
    ``sigmoid`` is the same functional stack written out with ``DenseBlock``
    and a small fixed-scale initializer, with the same layer names.
    """
    if name == "relu_he_bn":
        return mlp(
            num_features,
            [width] * depth,
            activation="relu",
            normalization="batch",
            output_units=NUM_CLASSES,
            output_activation="softmax",
            name=name,
        )
    inputs = keras.Input((num_features,), name="features")
    x = inputs
    for i in range(depth):
        # One initializer per layer: each draws its own weights.
        small = keras.initializers.RandomNormal(stddev=INIT_STDDEV)
        x = DenseBlock(
            width, activation="sigmoid", kernel_initializer=small, name=f"dense_block_{i}"
        )(x)
    outputs = keras.layers.Dense(
        NUM_CLASSES,
        activation="softmax",
        kernel_initializer=for_activation("softmax"),
        name="output",
    )(x)
    return keras.Model(inputs, outputs, name=name)


def train(name, args, data):
    """Train one model with a ``GradientNormMonitor``; returns ``(model, report, seconds)``."""
    x_train, y_train = data["train"]
    keras.utils.set_random_seed(args.seed)  # same seed for both: same shuffling
    model = build_model(name, x_train.shape[1], args.depth, args.width)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING),
        metrics=["accuracy"],
    )
    monitor = GradientNormMonitor()
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=BATCH_SIZE,
        callbacks=[monitor],
        verbose=args.verbose,
    )
    seconds = time.perf_counter() - start
    return model, monitor.last_report, seconds


def write_gradient_report(report, out, name):
    """Write the report as text, JSON and a PNG heatmap; return its dict."""
    data = report.to_dict()
    with open(os.path.join(out, f"gradient_report_{name}.txt"), "w") as f:
        f.write(f"{report}\n")
    with open(os.path.join(out, f"gradient_report_{name}.json"), "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    report.plot(os.path.join(out, f"gradient_heatmap_{name}.png"))
    return data


def main(argv=None):
    """Run the recipe; returns the summary written to ``summary.json``."""
    start = time.perf_counter()
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    data = load_data()

    summary = {}
    for name in MODELS:
        model, report, seconds = train(name, args, data)
        test_loss, test_accuracy = model.evaluate(*data["test"], verbose=0)
        flags = write_gradient_report(report, args.out, name)["flags"]
        summary[name] = {
            "description": DESCRIPTIONS[name].format(stddev=INIT_STDDEV),
            "test_accuracy": float(test_accuracy),
            "test_loss": float(test_loss),
            "healthy": report.healthy,
            "flags": [
                {key: flag[key] for key in ("layer", "kind", "first_step")} for flag in flags
            ],
            "vanishing_layers": report.flagged("vanishing"),
            "layers": len(report.layers),
            "samples": len(report.steps),
            "train_seconds": round(seconds, 3),
        }
        print(
            f"== {name}: {args.depth} hidden layers of {args.width} units, "
            f"{summary[name]['description']}; test accuracy {test_accuracy:.4f}"
        )
        print(report)
        print()
    summary.update(
        {
            "examples": {split: len(xy[1]) for split, xy in data.items()},
            "wall_seconds": round(time.perf_counter() - start, 3),
            "versions": {"keras": keras.__version__, "backend": keras.backend.backend()},
            "args": vars(args),
        }
    )
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    print(f"{'model':<12}{'test accuracy':>15}  {'vanishing layers':>18}  flags")
    for name in MODELS:
        row = summary[name]
        kinds = sorted({flag["kind"] for flag in row["flags"]})
        vanishing = f"{len(row['vanishing_layers'])} of {row['layers']}"
        print(
            f"{name:<12}{row['test_accuracy']:>15.4f}  {vanishing:>18}  {', '.join(kinds) or 'none'}"
        )
    print(f"{summary['wall_seconds']:.1f} s; wrote {', '.join(sorted(os.listdir(args.out)))} "
          f"to {os.path.abspath(args.out)}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])

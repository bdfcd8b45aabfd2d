"""nnkit on one accelerator (JAX backend): bare ``fit`` speed and what nnkit's parts cost per step.

Question (issue 24): on a model that keeps a GPU busy, how many steps a
second does a bare ``fit`` run, and how much slower is a step with

- ``stack``: nnkit's whole callback stack (``EarlyStopping``,
  ``ReduceLROnPlateau``, ``LearningRateMonitor``, ``GradientNormMonitor`` at
  its default cadence; the list of ``bench/hot_path.py``), target ``<= 1.03``;
- ``monitor``: ``GradientNormMonitor()`` alone;
- ``sam``: ``nnkit.models.SharpnessAwareMinimization`` around the same model
  (two forward-backward passes a step: about 2 is its nature);

all against the bare ``fit`` with Adam; and, on a second (narrower) MLP, the
per-step ratio against Adam of ``nnkit.optimizers`` ``KFAC``, ``Shampoo`` and
``SOAP`` at their default cadences. Public APIs only.

Models: an MLP of ``--depth`` Dense layers ``--width`` wide (default 4 x
4096, ``mixed_bfloat16``, batch 2048: about 52M parameters, a few
milliseconds a step on an H100) with a 10-class head, on random inputs
``--features`` wide (256: the host feeds 2 MB a step, not 32); the
optimizers' MLP is ``--opt-width`` wide (default 1024; their preconditioner
refreshes grow with the cube of the width). ``--cpu-small`` shrinks
everything for a CPU smoke test (the test in ``tests/test_bench_gpu.py``).

Method: every configuration is its own model (same seed). Each first
``fit`` traces (its time is reported, ``first_fit_s``). Then ``--repeats``
rounds run every configuration once, in an order rotated from round to
round; a ``fit`` runs ``1 + --epochs`` epochs, an epoch-hook timer drops
epoch 0 and divides the rest by the steps; a configuration's ratio in a
round is its step time over the baseline's in the same round (``bare`` for
the callbacks and SAM, ``adam`` for the optimizers); figures are medians
over rounds, with the spread (min, max). Rounds stop early when
``--budget-s`` is spent (at least one round runs). A configuration that
fails records its error instead of a figure.

Usage::

    python bench/gpu.py               # on a GPU machine (under 8 minutes on one H100)
    python bench/gpu.py --cpu-small   # CPU, tiny sizes (seconds)

The last line of stdout is one JSON object with every figure.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nnkit.callbacks import (  # noqa: E402
    EarlyStopping,
    GradientNormMonitor,
    LearningRateMonitor,
    ReduceLROnPlateau,
)
from nnkit.models import SharpnessAwareMinimization  # noqa: E402
from nnkit.optimizers import KFAC, SOAP, Shampoo  # noqa: E402

CLASSES = 10
TARGET = 1.03
MODEL_CONFIGS = ("bare", "stack", "monitor", "sam")
OPTIMIZER_CONFIGS = ("adam", "kfac", "shampoo", "soap")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--opt-width", type=int, default=1024)
    parser.add_argument(
        "--features", type=int, default=256, help="input width (small: the host feeds it)"
    )
    parser.add_argument("--dtype-policy", default="mixed_bfloat16")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per fit")
    parser.add_argument("--repeats", type=int, default=5, help="rounds")
    parser.add_argument("--budget-s", type=float, default=360.0, help="stop rounds after this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-small", action="store_true", help="CPU smoke test: tiny sizes")
    args = parser.parse_args(argv)
    if args.cpu_small:
        args.width, args.depth, args.batch, args.opt_width, args.features = 32, 2, 32, 16, 8
        args.dtype_policy, args.steps, args.epochs, args.repeats = "float32", 3, 1, 1
    sizes = (args.width, args.depth, args.batch, args.opt_width, args.features)
    if min(*sizes, args.steps, args.epochs) < 1:
        parser.error("sizes, --steps and --epochs must be >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of every epoch, from the epoch hooks only."""

    def __init__(self):
        super().__init__()
        self.wall = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.wall.append(time.perf_counter() - self._start)


def stack():
    """``bench/hot_path.py``'s callbacks: nnkit's, at their defaults."""
    return [
        EarlyStopping(monitor="loss", patience=1000),
        ReduceLROnPlateau(monitor="loss", patience=1000),
        LearningRateMonitor(),
        GradientNormMonitor(),
    ]


def mlp(features, width, depth, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((features,))]
        + [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
        + [keras.layers.Dense(CLASSES, dtype="float32")]
    )


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make(config, args):
    """``(model, callbacks factory)`` of one configuration."""
    if config in MODEL_CONFIGS:
        model = mlp(args.features, args.width, args.depth, args.seed)
        if config == "sam":
            model = SharpnessAwareMinimization(model)
        model.compile(keras.optimizers.Adam(1e-4), loss=loss())
        callbacks = {"stack": stack, "monitor": lambda: [GradientNormMonitor()]}.get(config, list)
        return model, callbacks
    model = mlp(args.features, args.opt_width, args.depth, args.seed)
    optimizer = {
        "adam": lambda: keras.optimizers.Adam(1e-4),
        "kfac": lambda: KFAC(1e-3, model=model),
        "shampoo": lambda: Shampoo(1e-4),
        "soap": lambda: SOAP(1e-4),
    }[config]()
    model.compile(optimizer, loss=loss())
    return model, list


def device_name():
    import jax

    device = jax.devices()[0]
    return f"{device.platform}: {getattr(device, 'device_kind', str(device))}"


def main(argv=None):
    args = parse_args(argv)
    if keras.backend.backend() != "jax":
        raise SystemExit(f"bench/gpu.py runs on JAX; Keras has {keras.backend.backend()!r}")
    keras.config.set_dtype_policy(args.dtype_policy)
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    rows = args.steps * args.batch
    x = rng.normal(size=(rows, args.features)).astype("float32")
    y = rng.integers(0, CLASSES, size=(rows,)).astype("int32")

    runs, errors, first_fit_s = {}, {}, {}
    for config in MODEL_CONFIGS + OPTIMIZER_CONFIGS:
        try:
            runs[config] = make(config, args)
            model, callbacks = runs[config]
            began = time.perf_counter()
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0,
                      callbacks=callbacks())  # fmt: skip
            first_fit_s[config] = round(time.perf_counter() - began, 3)
        except Exception as error:  # noqa: BLE001 - a figure missing says why
            errors[config] = f"{type(error).__name__}: {error}"[:500]
            runs.pop(config, None)

    step_s = {config: [] for config in runs}
    ratios = {config: [] for config in runs}
    order = list(runs)
    rounds = 0
    while rounds < args.repeats:
        shift = rounds % len(order)
        for config in order[shift:] + order[:shift]:
            model, callbacks = runs[config]
            timer = EpochTimer()
            model.fit(x, y, batch_size=args.batch, epochs=1 + args.epochs, verbose=0,
                      callbacks=[*callbacks(), timer])  # fmt: skip
            step_s[config].append(sum(timer.wall[1:]) / (args.epochs * args.steps))
        for config in runs:
            base = "bare" if config in MODEL_CONFIGS else "adam"
            if base in step_s:
                ratios[config].append(step_s[config][-1] / step_s[base][-1])
        rounds += 1
        print(f"round {rounds}: " + ", ".join(f"{c} {r[-1]:.3f}" for c, r in ratios.items()),
              file=sys.stderr)  # fmt: skip
        if time.perf_counter() - start > args.budget_s:
            break

    def figures(config):
        r = ratios[config]
        return {
            "step_ms": round(statistics.median(step_s[config]) * 1e3, 4),
            "ratio": round(statistics.median(r), 4) if r else None,
            "ratio_min": round(min(r), 4) if r else None,
            "ratio_max": round(max(r), 4) if r else None,
            "first_fit_s": first_fit_s[config],
        }

    configs = {config: figures(config) for config in runs}
    bare = configs.get("bare")
    result = {
        "benchmark": "gpu",
        "device": device_name(),
        "target_ratio": TARGET,
        "bare_steps_per_second": round(1e3 / bare["step_ms"], 2) if bare else None,
        "stack_ratio": configs.get("stack", {}).get("ratio"),
        "monitor_ratio": configs.get("monitor", {}).get("ratio"),
        "sam_ratio": configs.get("sam", {}).get("ratio"),
        "optimizer_ratio_vs_adam": {
            c: configs[c]["ratio"] for c in OPTIMIZER_CONFIGS[1:] if c in configs
        },
        "configs": configs,
        "errors": errors,
        "rounds": rounds,
        "wall_s": round(time.perf_counter() - start, 1),
        "settings": {
            k: getattr(args, k)
            for k in (
                "width",
                "depth",
                "batch",
                "opt_width",
                "dtype_policy",
                "steps",
                "epochs",
                "repeats",
                "budget_s",
                "seed",
                "cpu_small",
            )  # fmt: skip
        },
        "keras": keras.__version__,
    }
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    main()

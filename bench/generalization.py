"""Per-step cost of SAM, SWA, drop-path and MixUp relative to the same plain ``fit``.

Question: how much slower is a training step with each technique? Targets
(issue 14): SAM ``<= 2.05`` (its second forward and backward pass is the
only extra work), SWA's averaging ``<= 1.02`` (outside the end-of-training
batch-norm pass, which this model does not have), drop-path and MixUp
``<= 1.03``.

Model, on seeded random data, TensorFlow backend on CPU: a residual
``nnkit.models.mlp`` (64 inputs, ``--depth`` blocks of ``--width`` units,
10 classes, batch 128), SGD with momentum, sparse cross-entropy;
``jit_compile`` left at Keras's default. Configurations, one model instance
each, same initial weights and batches: ``baseline``; ``sam``
(``SharpnessAwareMinimization(rho=0.05)``); ``swa``
(``StochasticWeightAveraging(start_epoch=0)``: it averages at the end of
every epoch, the most often it can); ``drop_path`` (``mlp(drop_path=0.2)``);
``mixup`` (``MixUp(alpha=0.2)``).

Method (as ``bench/gradient_monitor_overhead.py``): each timed ``fit`` runs
``1 + --epochs`` epochs; a timing callback, last in the list, records the
wall time from ``on_epoch_begin`` to ``on_epoch_end`` (so SWA's host read at
the epoch end is included); epoch 0 (tracing) is dropped. In each of
``--repeats`` rounds the configurations run in a rotated order, each between
two baseline fits, ``B c1 B c2 B ...``; a configuration's ratio in a round is
its step time over the mean of the two baseline fits around it, and the
figure is the median over rounds; ``ratio_best`` is the fastest fit of the
configuration over the fastest baseline fit (the runs least disturbed by
other processes). The machine this was written on was
shared: rerun on a quiet one for figures to quote.

Usage::

    python bench/generalization.py          # full run (a few minutes on 2 CPU cores)
    python bench/generalization.py --quick  # smoke test (seconds)

The last line of stdout is one JSON object with every figure.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nnkit.callbacks import StochasticWeightAveraging  # noqa: E402
from nnkit.models import MixUp, SharpnessAwareMinimization, mlp  # noqa: E402

try:  # imported from the repository root (the smoke tests)
    from bench._timing import environment, load_average, set_threads  # noqa: E402
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    from _timing import environment, load_average, set_threads  # noqa: E402

CLASSES, FEATURES, BATCH = 10, 64, 128
TARGETS = {"sam": 2.05, "swa": 1.02, "drop_path": 1.03, "mixup": 1.03}
CONFIGS = tuple(TARGETS)


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of every epoch, from the epoch hooks only."""

    def __init__(self):
        super().__init__()
        self.wall = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.wall.append(time.perf_counter() - self._start)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--steps", type=int, default=120, help="timed steps per fit")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per fit")
    parser.add_argument("--width", type=int, default=256, help="units per residual block")
    parser.add_argument("--depth", type=int, default=4, help="residual blocks")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: default)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1 round, 4 steps, tiny model"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.epochs, args.width, args.depth = 1, 4, 2, 16, 2
    if args.repeats < 1 or args.epochs < 1 or args.steps < args.epochs or args.steps % args.epochs:
        parser.error("need --repeats >= 1, --epochs >= 1 and --steps a multiple of --epochs")
    return args


def build(config, args):
    keras.utils.set_random_seed(args.seed)  # the same initial weights everywhere
    drop_path = 0.2 if config == "drop_path" else 0.0
    model = mlp(FEATURES, [args.width] * args.depth, residual=True, drop_path=drop_path,
                output_units=CLASSES)  # fmt: skip
    if config == "sam":
        model = SharpnessAwareMinimization(model, rho=0.05)
    elif config == "mixup":
        model = MixUp(model, alpha=0.2, seed=args.seed)
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def callbacks_of(config):
    return [StochasticWeightAveraging(0)] if config == "swa" else []


def run(args):
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = args.steps // args.epochs
    x = rng.normal(size=(steps_per_epoch * BATCH, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, len(x)).astype("int32")
    configs = ["baseline", *CONFIGS]
    models = {config: build(config, args) for config in configs}
    for config in configs:  # warm-up
        models[config].fit(
            x, y, batch_size=BATCH, epochs=1, callbacks=callbacks_of(config), verbose=0
        )

    step_s = {config: [] for config in configs}
    ratios = {config: [] for config in CONFIGS}

    def timed_fit(config):
        timer = EpochTimer()
        models[config].fit(
            x, y, batch_size=BATCH, epochs=1 + args.epochs,
            callbacks=[*callbacks_of(config), timer], verbose=0,
        )  # fmt: skip
        step_s[config].append(sum(timer.wall[1:]) / args.steps)
        return step_s[config][-1]

    for round_index in range(args.repeats):
        shift = round_index % len(CONFIGS)
        before = timed_fit("baseline")
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            measured = timed_fit(config)
            after = timed_fit("baseline")
            ratios[config].append(measured / ((before + after) / 2))
            before = after
        print(
            f"round {round_index + 1}/{args.repeats}: "
            + ", ".join(f"{c} {ratios[c][-1]:.3f}" for c in CONFIGS),
            file=sys.stderr,
        )
    return {
        config: {
            "step_ms": round(statistics.median(step_s[config]) * 1e3, 3),
            "ratio": round(statistics.median(ratios[config]), 4) if config in ratios else 1.0,
            "ratio_min": round(min(ratios[config]), 4) if config in ratios else 1.0,
            "ratio_max": round(max(ratios[config]), 4) if config in ratios else 1.0,
            "ratio_best": round(min(step_s[config]) / min(step_s["baseline"]), 4),
        }
        for config in configs
    }, models["baseline"].count_params()


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    load_before = load_average()
    results, params = run(args)
    load_after = load_average()
    print(
        f"\n{'config':<12}{'ms/step':>10}{'ratio':>9}{'min':>9}{'max':>9}{'best':>9}{'target':>9}"
    )
    for config, r in results.items():
        target = TARGETS.get(config)
        print(
            f"{config:<12}{r['step_ms']:>10.3f}{r['ratio']:>9.4f}{r['ratio_min']:>9.4f}"
            f"{r['ratio_max']:>9.4f}{r['ratio_best']:>9.4f}"
            f"{'' if target is None else f'{target:>9.2f}'}"
        )
    within = {c: results[c]["ratio"] <= TARGETS[c] for c in CONFIGS}
    print(
        f"{params:,} parameters, batch {BATCH}, {args.steps} timed steps per fit, "
        f"{args.repeats} rounds; load average {load_before} -> {load_after} on "
        f"{os.cpu_count()} CPUs; within target: {within}"
    )
    figures = {
        "benchmark": "generalization",
        "targets": TARGETS,
        "ratios": {c: results[c]["ratio"] for c in CONFIGS},
        "within_target": within,
        "configs": results,
        "params": params,
        "settings": {k: v for k, v in vars(args).items()},
        "environment": environment(load_before, load_after),
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

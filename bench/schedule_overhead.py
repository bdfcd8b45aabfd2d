"""Overhead of nnkit's schedules and callbacks on the speed of ``fit``.

Question: how much slower is the same ``fit`` when the optimizer's learning
rate is an nnkit schedule instead of a constant float, or when nnkit's
callbacks are attached? Target (issue): every ratio ``<= 1.03``.

Method: one small MLP per configuration on seeded random data (same
architecture, same initial weights, same data, same batches), compiled the
same way (``jit_compile`` left at Keras's default). Each configuration first
runs a warm-up ``fit`` of one epoch (tracing and compilation excluded). Then,
in each of ``--repeats`` rounds, every configuration runs one timed ``fit``
of ``--steps`` optimizer steps (``--epochs`` epochs), in an order rotated
from round to round, with a baseline ``fit`` before each of them and after
the last one: ``B c1 B c2 B ... cn B``. A configuration's ratio in a round is
its time divided by the mean of the two baseline fits around it, so slow
drifts and bursts of load from other processes cancel; the figures are the
median ratio and the median steps/s over the rounds.
``ratio = time(config) / time(baseline)``, so 1.03 means 3% slower. Each
time is that of the whole ``fit`` call, as a user would see it.

Configurations: ``baseline`` (Adam with a float learning rate), one per nnkit
schedule pattern (cosine with warmup and warm restarts, step, multi-step,
warmup joined to cosine, an epoch-counted schedule, ``Scaled``), and two with
callbacks: ``callbacks`` (float rate + ``EarlyStopping``,
``ReduceLROnPlateau``, ``LearningRateMonitor``) and ``callbacks+backup``
(the same + ``BackupAndRestore``). ``BackupAndRestore`` writes the weights and
the callback state to disk at every epoch end, a per-epoch cost that depends
on the model size, the disk and the epoch length, not a per-step one; it is
kept apart so that ``callbacks`` measures the per-step path alone, and its
own figure says what a backup per epoch costs at this epoch length.

Usage::

    python bench/schedule_overhead.py            # full run (about 4 minutes on 2 CPU cores)
    python bench/schedule_overhead.py --quick    # smoke test (seconds)

The last line of stdout is one JSON object with every figure (the convention
of every ``bench/`` script).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nnkit.callbacks import (  # noqa: E402
    BackupAndRestore,
    EarlyStopping,
    LearningRateMonitor,
    ReduceLROnPlateau,
)
from nnkit.schedules import (  # noqa: E402
    Constant,
    CosineAnnealing,
    EpochSchedule,
    JoinSchedules,
    MultiStepDecay,
    Scaled,
    StepDecay,
    Warmup,
)

try:  # imported from the repository root (the smoke tests)
    from bench._timing import environment, load_average, set_threads  # noqa: E402
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    from _timing import environment, load_average, set_threads  # noqa: E402

FEATURES, CLASSES = 64, 10
PEAK = 1e-3
TARGET = 1.03
CONFIGS = (
    "cosine",
    "step",
    "multistep",
    "warmup+join",
    "epoch",
    "scaled",
    "callbacks",
    "callbacks+backup",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="timed rounds (each runs every configuration once, between two baseline fits)",
    )
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per timed fit")
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs per timed fit (steps per epoch = steps / epochs)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="examples per step")
    parser.add_argument("--hidden", type=int, default=256, help="units of each of 2 hidden layers")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow intra-op and inter-op threads (0: TensorFlow's default)",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated subset of configurations to run (the baseline "
        "always runs); default: all of " + ", ".join(CONFIGS),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: at most 2 rounds, --steps 20 --epochs 2, tiny model",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.steps, args.epochs, args.hidden = 20, 2, 16
    if args.repeats < 1 or args.epochs < 1 or args.steps < args.epochs:
        parser.error("need --repeats >= 1, --epochs >= 1 and --steps >= --epochs")
    if args.configs is not None:
        args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
        unknown = sorted(set(args.configs) - set(CONFIGS))
        if unknown:
            parser.error(f"unknown --configs {unknown}; choose from {', '.join(CONFIGS)}")
    if args.steps % args.epochs:
        parser.error(f"--steps ({args.steps}) must be a multiple of --epochs ({args.epochs})")
    return args


def make_data(seed, num_examples):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, FEATURES)).astype("float32")
    weights = rng.normal(size=(FEATURES, CLASSES)).astype("float32")
    y = np.argmax(x @ weights + rng.normal(size=(num_examples, CLASSES)), axis=1)
    return x, y.astype("int32")


def schedules(steps_per_epoch, horizon):
    """Every nnkit schedule pattern, sized so that a run crosses its phases.

    ``horizon`` is the number of steps all fits together run; milestones and
    restart cycles fall inside it, so the timed steps see every branch.
    """
    quarter = max(horizon // 4, 1)
    epochs = max(horizon // steps_per_epoch, 2)
    return {
        "cosine": CosineAnnealing(
            PEAK,
            horizon,
            1e-5,
            warmup_steps=quarter // 4,
            cycle_steps=quarter,
            cycle_mult=2.0,
            cycle_decay=0.8,
        ),
        "step": StepDecay(PEAK, step_size=quarter, factor=0.5),
        "multistep": MultiStepDecay(PEAK, milestones=[quarter, 2 * quarter, 3 * quarter]),
        "warmup+join": Warmup(
            JoinSchedules([Constant(PEAK), CosineAnnealing(PEAK, horizon)], [quarter]), quarter // 4
        ),
        "epoch": EpochSchedule(
            CosineAnnealing(PEAK, epochs, warmup_steps=1), steps_per_epoch, granularity="epoch"
        ),
        "scaled": Scaled(CosineAnnealing(PEAK, horizon), scale=0.5),
    }


def callbacks(backup_dir=None):
    # Nothing may stop or reduce during the benchmark: huge patience. The
    # losses are monitored on the training loss (no validation pass to time).
    chosen = [
        EarlyStopping("loss", patience=10**6, restore_best_weights=True),
        ReduceLROnPlateau("loss", patience=10**6),
        LearningRateMonitor(),
    ]
    if backup_dir is not None:
        chosen.append(BackupAndRestore(backup_dir))
    return chosen


def build(learning_rate, args):
    keras.utils.set_random_seed(args.seed)  # the same initial weights everywhere
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(args.hidden, activation="relu"),
            keras.layers.Dense(args.hidden, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def schedule_cost(schedule, evaluations, repeats=5):
    """Seconds per in-graph evaluation of ``schedule`` (``None``: a float rate), best of ``repeats``.

    The schedule is evaluated ``evaluations`` times inside one compiled
    ``tf.while_loop`` at consecutive steps, as the optimizer does once per
    update. Subtracting the figure of a float rate leaves what the schedule
    adds to a training step; the minimum over repeats filters out the load
    of other processes, which the ``fit`` timings cannot.
    """
    import tensorflow as tf

    start = tf.Variable(0, dtype="int64")

    def body(i, total):
        rate = schedule(start + i) if schedule is not None else tf.constant(PEAK)
        return i + 1, total + tf.cast(rate, "float32")

    @tf.function(autograph=False)  # an explicit tf.while_loop: nothing to convert
    def loop():
        return tf.while_loop(
            lambda i, _: i < evaluations, body, (tf.constant(0, "int64"), tf.constant(0.0))
        )

    loop()  # trace
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        loop()
        best = min(best, time.perf_counter() - begin)
    return best / evaluations


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    steps_per_epoch = args.steps // args.epochs
    x, y = make_data(args.seed, steps_per_epoch * args.batch_size)
    horizon = args.steps * (args.repeats + 1)

    with tempfile.TemporaryDirectory(prefix="nnkit-bench-") as tmp:
        configs = {"baseline": (PEAK, [])}
        schedule_objects = schedules(steps_per_epoch, horizon)
        configs.update({name: (s, []) for name, s in schedule_objects.items()})
        configs["callbacks"] = (PEAK, callbacks())
        configs["callbacks+backup"] = (PEAK, callbacks(os.path.join(tmp, "backup")))
        if args.configs is not None:
            configs = {n: c for n, c in configs.items() if n == "baseline" or n in args.configs}

        models = {}
        for name, (learning_rate, cbs) in configs.items():
            models[name] = model = build(learning_rate, args)
            # Warm-up: one epoch traces the train function (and lets ReduceLROnPlateau
            # rebuild it), so the timed fits run the traced function only.
            model.fit(x, y, batch_size=args.batch_size, epochs=1, callbacks=cbs, verbose=0)

        names = [name for name in configs if name != "baseline"]
        wall = {name: [] for name in ["baseline", *names]}
        cpu = {name: [] for name in ["baseline", *names]}
        ratios = {name: [] for name in names}
        cpu_ratios = {name: [] for name in names}
        baseline_drift = []  # |t(baseline after) / t(baseline before) - 1|: the noise floor

        def timed_fit(name):
            model, cbs = models[name], configs[name][1]
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            model.fit(
                x, y, batch_size=args.batch_size, epochs=args.epochs, callbacks=cbs, verbose=0
            )
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
            return wall[name][-1], cpu[name][-1]

        load_before = load_average()
        for round_index in range(args.repeats):
            shift = round_index % len(names)
            before = timed_fit("baseline")
            for name in names[shift:] + names[:shift]:
                elapsed = timed_fit(name)
                after = timed_fit("baseline")
                ratios[name].append(elapsed[0] / ((before[0] + after[0]) / 2))
                cpu_ratios[name].append(elapsed[1] / ((before[1] + after[1]) / 2))
                baseline_drift.append(abs(after[0] / before[0] - 1.0))
                before = after
            print(
                f"round {round_index + 1}/{args.repeats}: "
                + ", ".join(f"{n} {ratios[n][-1]:.3f}" for n in names),
                file=sys.stderr,
            )
        load_after = load_average()

    # In-graph cost of each schedule per evaluation, over a float rate (TensorFlow only).
    evaluations, repeats = (200, 2) if args.quick else (20000, 5)
    added_us = {}
    if keras.backend.backend() == "tensorflow":
        float_cost = schedule_cost(None, evaluations, repeats)
        for name in names:
            if name in schedule_objects:
                cost = schedule_cost(schedule_objects[name], evaluations, repeats)
                added_us[name] = round(max(cost - float_cost, 0.0) * 1e6, 2)

    def figures_of(name):
        paired = ratios.get(name, [1.0])
        result = {
            "steps_per_second": round(args.steps / statistics.median(wall[name]), 1),
            "best_steps_per_second": round(args.steps / min(wall[name]), 1),
            "ratio": round(statistics.median(paired), 4),
            "ratio_min": round(min(paired), 4),
            "ratio_max": round(max(paired), 4),
            "ratio_cpu": round(statistics.median(cpu_ratios.get(name, [1.0])), 4),
            "ratio_best": round(min(wall[name]) / min(wall["baseline"]), 4),
        }
        if name in added_us:
            # What the schedule adds to a step, relative to the fastest baseline step.
            step_us = min(wall["baseline"]) / args.steps * 1e6
            result["schedule_us_per_step"] = added_us[name]
            result["ratio_in_graph"] = round(1.0 + added_us[name] / step_us, 4)
        return result

    results = {name: figures_of(name) for name in ["baseline", *names]}
    worst = max(names, key=lambda n: results[n]["ratio"])
    noise = round(statistics.median(baseline_drift), 4)
    backup_ms = None
    if "callbacks" in results and "callbacks+backup" in results:
        # The backup's cost is per epoch: what it adds to `callbacks`, per epoch.
        baseline_seconds = statistics.median(wall["baseline"])
        extra = results["callbacks+backup"]["ratio"] - results["callbacks"]["ratio"]
        backup_ms = round(extra * baseline_seconds / args.epochs * 1e3, 1)

    print(
        f"\nfit of {args.steps} steps ({args.epochs} epochs x {steps_per_epoch} steps, "
        f"batch {args.batch_size}), {args.repeats} rounds of B c1 B c2 ... B"
    )
    print(
        "ratio: median over rounds of t(config) / mean t(baseline fits around it); "
        "cpu: the same with process CPU time; best: min t(config) / min t(baseline);\n"
        "sched_us: what the schedule adds per step, timed in-graph (best of 5); "
        "in_graph: 1 + sched_us / fastest baseline step"
    )
    header = (
        "configuration",
        "steps/s",
        "ratio",
        "min",
        "max",
        "cpu",
        "best",
        "sched_us",
        "in_graph",
    )
    print(f"{header[0]:<18}" + "".join(f"{h:>9}" for h in header[1:]))
    for name in ["baseline", *names]:
        r = results[name]
        print(
            f"{name:<18}{r['steps_per_second']:>9.1f}"
            + "".join(
                f"{r[k]:>9.4f}"
                for k in ("ratio", "ratio_min", "ratio_max", "ratio_cpu", "ratio_best")
            )
            + (
                f"{r['schedule_us_per_step']:>9.2f}{r['ratio_in_graph']:>9.4f}"
                if "schedule_us_per_step" in r
                else ""
            )
        )
    print(
        f"noise floor: median |t(baseline)/t(previous baseline) - 1| = {noise:.4f}; "
        f"load average {load_before} -> {load_after} on {os.cpu_count()} CPUs"
    )
    if backup_ms is not None:
        print(
            f"BackupAndRestore adds about {backup_ms:.1f} ms per epoch "
            f"(epochs of {steps_per_epoch} steps here)"
        )
    print(f"target: every ratio <= {TARGET}; worst: {worst} {results[worst]['ratio']:.4f}")

    figures = {
        "benchmark": "schedule_overhead",
        "target_ratio": TARGET,
        "all_within_target": all(results[n]["ratio"] <= TARGET for n in names),
        "worst": worst,
        "noise": noise,
        "backup_ms_per_epoch": backup_ms,
        "configs": results,
        "settings": {
            "repeats": args.repeats,
            "steps": args.steps,
            "epochs": args.epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": args.batch_size,
            "hidden": args.hidden,
            "seed": args.seed,
            "quick": args.quick,
            "threads": args.threads,
            "jit_compile": bool(models["baseline"].jit_compile),
        },
        "environment": environment(load_before, load_after),
    }
    print(json.dumps(figures, sort_keys=True))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

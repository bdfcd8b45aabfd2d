"""Overhead of ``GradientNormMonitor`` on the step time of ``fit``.

Question: how much slower is a training step of the same ``fit`` with
``nnkit.callbacks.GradientNormMonitor`` attached? Target (issue): ``<= 1.03``
at the default cadence (``sample_every=10``); the figure at
``sample_every=1`` is printed too.

Models, on seeded random data, TensorFlow backend on CPU: ``mlp``, a small
MLP (64 inputs, 3 Dense layers 64-64-10, batch 64, about 9k parameters) and
``large``, an MLP of 784-1024-1024-10 (about 1.86M parameters, batch 256).
Configurations, one model instance each (same initial weights, same data and
batches, Adam, ``jit_compile`` left at Keras's default): ``baseline`` (no
callbacks), ``monitor`` (``GradientNormMonitor()``) and ``monitor_n1``
(``GradientNormMonitor(sample_every=1)``).

Method: step time EXCLUDING tracing. The monitor traces its train function
at its first ``fit`` of a model and installs it again in later fits (one
trace per model); Keras traces its own once too. Each timed ``fit`` runs
``1 + --epochs`` epochs, and a timing callback, last in the callback list,
records the wall and process CPU time from ``on_epoch_begin`` to
``on_epoch_end`` (epoch hooks only, so it adds nothing per batch and it
includes the monitor's own per-epoch read of its samples). Epoch 0, where the
tracing happens, is dropped; the step time of a ``fit`` is the time of the
other epochs divided by their steps. Every model first runs one warm-up
``fit``. Then, in each of ``--repeats`` rounds, the configurations run in an
order rotated from round to round, with a baseline ``fit`` before each of
them and after the last one: ``B c1 B c2 B``. A configuration's ratio in a
round is its step time divided by the mean step time of the two baseline
fits around it, so slow drifts and bursts of load from other processes
cancel; the figures are medians over the rounds.
``ratio = step_time(config) / step_time(baseline)``: 1.03 means 3% slower.
``fit_ratio`` is the same for the wall time of the whole ``fit`` call
(callbacks and per-``fit`` set-up included), and
``first_epoch_extra_s`` the median time epoch 0 takes beyond a timed epoch.

Usage::

    python bench/gradient_monitor_overhead.py          # full run (about 4 minutes on 2 CPU cores)
    python bench/gradient_monitor_overhead.py --quick  # smoke test (seconds)

The last line of stdout is one JSON object with every figure (the convention
of every ``bench/`` script).
"""

import argparse
import functools
import itertools
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nnkit.callbacks import GradientNormMonitor  # noqa: E402

try:  # imported from the repository root (the smoke tests)
    from bench._timing import environment, load_average, set_threads  # noqa: E402
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    from _timing import environment, load_average, set_threads  # noqa: E402

TARGET = 1.03
CLASSES = 10
MODELS = ("mlp", "large")
CONFIGS = ("monitor", "monitor_n1")
QUICK_WIDTH = 16  # every hidden layer and input in --quick


class EpochTimer(keras.callbacks.Callback):
    """Wall and process CPU seconds of every epoch, from the epoch hooks only."""

    def __init__(self):
        super().__init__()
        self.wall, self.cpu = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=9,
        help="timed rounds (each runs every configuration once, between two baseline fits)",
    )
    parser.add_argument(
        "--steps", type=int, default=400, help="timed optimizer steps per fit of the small MLP"
    )
    parser.add_argument(
        "--large-steps",
        type=int,
        default=60,
        help="timed optimizer steps per fit of the large model",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="timed epochs per fit (steps per epoch = steps / epochs); "
        "each fit runs one more, untimed, first epoch",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow intra-op and inter-op threads (0: TensorFlow's default)",
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated subset of models to run: " + ", ".join(MODELS),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: at most 2 rounds, 4 timed steps in 2 epochs, "
        f"layers {QUICK_WIDTH} wide (the 'large' model is then small)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.steps, args.large_steps, args.epochs = 4, 4, 2
    if args.repeats < 1 or args.epochs < 1 or min(args.steps, args.large_steps) < args.epochs:
        parser.error("need --repeats >= 1, --epochs >= 1 and --steps, --large-steps >= --epochs")
    for flag, steps in (("--steps", args.steps), ("--large-steps", args.large_steps)):
        if steps % args.epochs:
            parser.error(f"{flag} ({steps}) must be a multiple of --epochs ({args.epochs})")
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"unknown --models {unknown}; choose from {', '.join(MODELS)}")
    return args


def spec_of(name, args):
    """``(features, hidden widths, batch size, timed steps)`` of model ``name``."""
    if name == "mlp":
        features, hidden, batch, steps = 64, (64, 64), 64, args.steps
    else:
        features, hidden, batch, steps = 784, (1024, 1024), 256, args.large_steps
    if args.quick:
        features, hidden = QUICK_WIDTH, (QUICK_WIDTH, QUICK_WIDTH)
    return features, hidden, batch, steps


def make_data(seed, num_examples, features):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, features)).astype("float32")
    weights = rng.normal(size=(features, CLASSES)).astype("float32")
    y = np.argmax(x @ weights + rng.normal(size=(num_examples, CLASSES)), axis=1)
    return x, y.astype("int32")


def build(features, hidden, seed):
    keras.utils.set_random_seed(seed)  # the same initial weights everywhere
    model = keras.Sequential(
        [keras.Input((features,))]
        + [keras.layers.Dense(units, activation="relu") for units in hidden]
        + [keras.layers.Dense(CLASSES)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def callbacks_of(config):
    if config == "monitor":
        return [GradientNormMonitor()]
    if config == "monitor_n1":
        return [GradientNormMonitor(sample_every=1)]
    return []


def bench_model(name, args):
    """Alternating timed rounds of one model; return its figures."""
    features, hidden, batch, steps = spec_of(name, args)
    steps_per_epoch = steps // args.epochs
    x, y = make_data(args.seed, steps_per_epoch * batch, features)
    configs = ["baseline", *CONFIGS]
    models = {config: build(features, hidden, args.seed) for config in configs}
    params = models["baseline"].count_params()
    for config in configs:  # warm-up: traces, builds the optimizer and the monitor
        models[config].fit(
            x, y, batch_size=batch, epochs=1, callbacks=callbacks_of(config), verbose=0
        )

    step_s = {config: [] for config in configs}  # seconds per step, epoch 0 dropped
    step_cpu = {config: [] for config in configs}
    fit_s = {config: [] for config in configs}  # the whole fit call
    first_extra = {config: [] for config in configs}
    ratios = {config: [] for config in CONFIGS}
    cpu_ratios = {config: [] for config in CONFIGS}
    fit_ratios = {config: [] for config in CONFIGS}
    drift = []  # |step(baseline after) / step(baseline before) - 1|: the noise floor

    def timed_fit(config):
        timer = EpochTimer()
        start = time.perf_counter()
        models[config].fit(
            x,
            y,
            batch_size=batch,
            epochs=1 + args.epochs,
            callbacks=[*callbacks_of(config), timer],  # the timer last: it sees the monitor's read
            verbose=0,
        )
        fit_s[config].append(time.perf_counter() - start)
        timed = timer.wall[1:]
        step_s[config].append(sum(timed) / steps)
        step_cpu[config].append(sum(timer.cpu[1:]) / steps)
        first_extra[config].append(timer.wall[0] - statistics.mean(timed))
        return step_s[config][-1], step_cpu[config][-1], fit_s[config][-1]

    for round_index in range(args.repeats):
        shift = round_index % len(CONFIGS)
        before = timed_fit("baseline")
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            measured = timed_fit(config)
            after = timed_fit("baseline")
            ratios[config].append(measured[0] / ((before[0] + after[0]) / 2))
            cpu_ratios[config].append(measured[1] / ((before[1] + after[1]) / 2))
            fit_ratios[config].append(measured[2] / ((before[2] + after[2]) / 2))
            drift.append(abs(after[0] / before[0] - 1.0))
            before = after
        print(
            f"{name} round {round_index + 1}/{args.repeats}: "
            + ", ".join(f"{c} {ratios[c][-1]:.3f}" for c in CONFIGS),
            file=sys.stderr,
        )

    def figures_of(config):
        paired = ratios.get(config, [1.0])
        return {
            "steps_per_second": round(1.0 / statistics.median(step_s[config]), 1),
            "best_steps_per_second": round(1.0 / min(step_s[config]), 1),
            "step_ms": round(statistics.median(step_s[config]) * 1e3, 3),
            "ratio": round(statistics.median(paired), 4),
            "ratio_min": round(min(paired), 4),
            "ratio_max": round(max(paired), 4),
            "ratio_cpu": round(statistics.median(cpu_ratios.get(config, [1.0])), 4),
            "ratio_best": round(min(step_s[config]) / min(step_s["baseline"]), 4),
            "fit_ratio": round(statistics.median(fit_ratios.get(config, [1.0])), 4),
            "first_epoch_extra_s": round(statistics.median(first_extra[config]), 3),
        }

    return {
        "params": params,
        "batch_size": batch,
        "features": features,
        "hidden": list(hidden),
        "timed_steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "jit_compile": bool(models["baseline"].jit_compile),
        "noise": round(statistics.median(drift), 4),
        "configs": {config: figures_of(config) for config in configs},
    }


def bench_in_graph(name, args):
    """Step time of the monitor's train function against a plain one, called directly.

    The whole-``fit`` ratio above includes everything Keras does per batch on
    the host and is at the mercy of other load on a 2-core machine. Here the
    traced train functions (Keras's own, and the monitor's at the default
    cadence and at ``sample_every=1``, installed exactly as ``fit`` installs
    them) are called back to back on the same batches, in blocks rotated
    round after round; the figures are the fastest block of each (the run
    least disturbed by other processes).
    """
    features, hidden, batch, _ = spec_of(name, args)
    x, y = make_data(args.seed, 8 * batch, features)
    models = {key: build(features, hidden, args.seed) for key in ("baseline", "default", "n1")}
    functions, monitors = {}, {}
    for key, model in models.items():
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # builds the optimizer
        if key == "baseline":
            functions[key] = model.train_function
            continue
        monitor = GradientNormMonitor(sample_every=10 if key == "default" else 1)
        monitor.set_model(model)
        monitor.set_params({"steps": 1000, "epochs": 1, "verbose": 0})
        monitor.on_train_begin()
        monitor.on_epoch_begin(0)
        functions[key], monitors[key] = model.train_function, monitor
    if keras.backend.backend() == "jax":
        steps = {key: _jax_stepper(models[key], functions[key], x, y, batch) for key in functions}
    else:
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
        iterator = iter(data.repeat())
        steps = {key: functools.partial(function, iterator) for key, function in functions.items()}
    for step in steps.values():  # trace and warm up
        for _ in range(3):
            step()
    calls = 4 if args.quick else (20 if name == "large" else 100)
    best = dict.fromkeys(functions, float("inf"))
    order = list(functions)
    for round_index in range(3 * args.repeats):
        shift = round_index % len(order)
        for key in order[shift:] + order[:shift]:
            start = time.perf_counter()
            for _ in range(calls):
                logs = steps[key]()
            float(logs["loss"])  # wait for the last step
            best[key] = min(best[key], (time.perf_counter() - start) / calls)
    for step in steps.values():
        getattr(step, "write_back", lambda: None)()
    for monitor in monitors.values():
        monitor.on_train_end()
    base = best["baseline"]
    return {
        "baseline_ms": round(base * 1e3, 4),
        "default_cadence_ratio": round(best["default"] / base, 4),
        "every_step_ratio": round(best["n1"] / base, 4),
    }


def _jax_stepper(model, function, x, y, batch):
    """One call of a JAX train function, as ``fit`` makes it: the state threaded from call to call.

    Keras's JAX train function is stateless, ``function(state, iterator) ->
    (logs, state)``, and donates its state; the state is the model's public
    variable lists (trainable, non-trainable, optimizer, metrics), read once
    here as ``fit`` reads them at the start of an epoch.
    """
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x) - batch + 1, batch)]
    iterator = itertools.cycle(batches)
    groups = (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )
    state = [tuple(v.value for v in variables) for variables in groups]

    def step():
        logs, new_state = function(tuple(state), iterator)
        state[:] = new_state
        return logs

    def write_back():  # as fit does at the end of an epoch
        for variables, values in zip(groups, state, strict=True):
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)

    step.write_back = write_back
    return step


def print_table(results, args):
    print(
        f"\nstep time without tracing: each fit runs 1 + {args.epochs} epochs, epoch 0 dropped; "
        f"{args.repeats} rounds of B c1 B c2 B"
    )
    print(
        "ratio: median over rounds of step(config) / mean step(baseline fits around it); "
        "cpu: the same with process CPU time;\nbest: min step(config) / min step(baseline); "
        "fit: the ratio of whole fit calls (per-fit set-up included); "
        "epoch0+: extra seconds of epoch 0"
    )
    header = ("model/config", "steps/s", "ms/step", "ratio", "min", "max", "cpu", "best", "fit")
    print(f"{header[0]:<20}" + "".join(f"{h:>9}" for h in header[1:]) + f"{'epoch0+':>9}")
    for name, result in results.items():
        for config, r in result["configs"].items():
            print(
                f"{name + '/' + config:<20}{r['steps_per_second']:>9.1f}{r['step_ms']:>9.3f}"
                + "".join(
                    f"{r[k]:>9.4f}"
                    for k in (
                        "ratio",
                        "ratio_min",
                        "ratio_max",
                        "ratio_cpu",
                        "ratio_best",
                        "fit_ratio",
                    )
                )
                + f"{r['first_epoch_extra_s']:>9.3f}"
            )
        print(
            f"  {name}: {result['params']:,} parameters, batch {result['batch_size']}, "
            f"{result['timed_steps']} timed steps per fit; noise floor {result['noise']:.4f}"
        )


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    load_before = load_average()
    results = {name: bench_model(name, args) for name in args.models}
    for name in args.models:
        results[name]["in_graph"] = bench_in_graph(name, args)
    load_after = load_average()

    print_table(results, args)
    default = {name: r["configs"]["monitor"]["ratio"] for name, r in results.items()}
    every_step = {name: r["configs"]["monitor_n1"]["ratio"] for name, r in results.items()}
    within = all(ratio <= TARGET for ratio in default.values())
    print(
        f"load average {load_before} -> {load_after} on {os.cpu_count()} CPUs\n"
        f"target: ratio <= {TARGET} at the default cadence (sample_every=10): "
        + ", ".join(f"{n} {r:.4f}" for n, r in default.items())
        + f" -> {'within' if within else 'NOT within'} target; sample_every=1: "
        + ", ".join(f"{n} {r:.4f}" for n, r in every_step.items())
        + "\nin-graph (train functions called directly, fastest block): "
        + "; ".join(
            f"{n} default cadence {r['in_graph']['default_cadence_ratio']:.4f}, "
            f"every step {r['in_graph']['every_step_ratio']:.4f}"
            for n, r in results.items()
        )
    )

    figures = {
        "benchmark": "gradient_monitor_overhead",
        "target_ratio": TARGET,
        "default_sample_every": GradientNormMonitor().sample_every,
        "all_within_target": within,
        "ratio_default": default,
        "ratio_every_step": every_step,
        "in_graph_default_cadence": {
            name: r["in_graph"]["default_cadence_ratio"] for name, r in results.items()
        },
        "models": results,
        "settings": {
            "repeats": args.repeats,
            "steps": args.steps,
            "large_steps": args.large_steps,
            "epochs": args.epochs,
            "seed": args.seed,
            "quick": args.quick,
            "threads": args.threads,
            "method": "per-step time of epochs 1..E (epoch 0 with tracing dropped), "
            "alternating B c1 B c2 B rounds, medians of paired ratios",
        },
        "environment": environment(load_before, load_after),
    }
    print(json.dumps(figures, sort_keys=True))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

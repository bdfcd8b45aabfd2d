"""The hot path: nnkit's whole callback stack against a bare ``fit``, on TensorFlow and JAX.

Question: how much slower is a ``fit`` with the callbacks a training run
usually carries (``nnkit.callbacks``: ``EarlyStopping``, ``ReduceLROnPlateau``,
``LearningRateMonitor`` and ``GradientNormMonitor`` at its default cadence)
than the same ``fit`` with none? Target (issue 24): ``<= 1.03`` on both
benchmark models, on both backends. ``BackupAndRestore`` is per-epoch disk
work, not hot-path work: its cost is reported as milliseconds per save.

Models (those of ``bench/gradient_monitor_overhead.py``), seeded random data,
Adam: ``mlp``, 64-64-64-10 (8,970 parameters, batch 64) and ``large``,
784-1024-1024-10 (1.86M parameters, batch 256). ``jit_compile`` is Keras's
default (off on TensorFlow CPU, on for JAX).

Method. One model instance per configuration (``baseline``: no callbacks;
``stack``: the four callbacks, made afresh for every ``fit`` as a user
would), same initial weights and batches. Each model's first ``fit`` traces;
its epoch 0 is reported separately (``first_epoch_s``: wall seconds of the
first ``fit``'s epoch 0, tracing included, and ``first_fit_s``). Then
``--repeats`` rounds of ``B S B``, each ``fit`` running ``1 + --epochs``
epochs; an epoch-hook timer (last in the list, so it sees every callback's
epoch work) times each epoch; epoch 0 is dropped (the epoch where a
callback's per-``fit`` set-up happens), the step time is the time of the
other epochs over their steps (and the process CPU time the same way). A
round's ratio is ``step(S) / mean(step(B)
before, step(B) after)``; ``ratio`` is the median over rounds, ``noise`` the
median ``|step(B after) / step(B before) - 1|`` (the drift the ratio cannot
tell from a cost), ``ratio_best`` the fastest stack step over the fastest
bare step (the fits least disturbed by other load), ``cpu_ratio`` the median
paired ratio of process CPU time per step (less sensitive to other load than
wall time; on JAX it includes XLA's worker threads), and ``fit_ratio`` the
paired ratio of whole ``fit`` calls.
The JAX backend runs in a subprocess (``KERAS_BACKEND=jax``), the same way.

``BackupAndRestore``: one more ``fit`` of each model with the stack and an
nnkit ``BackupAndRestore`` in a temporary directory; every write of a backup
is timed (``ms_per_save``: median; the model's weights, the optimizer's
slots and every callback's state, written atomically).

Usage::

    python bench/hot_path.py               # both backends (a few minutes on 2 CPU cores)
    python bench/hot_path.py --quick       # smoke test (seconds)

The last line of stdout is one JSON object with every figure.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from nnkit.callbacks import (  # noqa: E402
    BackupAndRestore,
    EarlyStopping,
    GradientNormMonitor,
    LearningRateMonitor,
    ReduceLROnPlateau,
)

try:  # imported from the repository root (the smoke tests)
    from bench._timing import environment, load_average
    from bench.gradient_monitor_overhead import EpochTimer, build, make_data
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    from _timing import environment, load_average
    from gradient_monitor_overhead import EpochTimer, build, make_data

TARGET = 1.03
MODELS = ("mlp", "large")
BACKENDS = ("tensorflow", "jax")
QUICK_WIDTH = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed B S B rounds")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per fit, mlp")
    parser.add_argument("--large-steps", type=int, default=40, help="timed steps per fit, large")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, 1 round")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.large_steps, args.epochs = 1, 4, 4, 2
    args.models = [m for m in args.models.split(",") if m]
    args.backends = [b for b in args.backends.split(",") if b]
    if set(args.models) - set(MODELS) or set(args.backends) - set(BACKENDS):
        parser.error(f"--models from {MODELS}, --backends from {BACKENDS}")
    if args.repeats < 1 or args.epochs < 1:
        parser.error("need --repeats >= 1 and --epochs >= 1")
    for flag, steps in (("--steps", args.steps), ("--large-steps", args.large_steps)):
        if steps < args.epochs or steps % args.epochs:
            parser.error(f"{flag} ({steps}) must be a positive multiple of --epochs")
    return args


def spec_of(name, args):
    """``(features, hidden, batch, timed steps)``."""
    if name == "mlp":
        spec = (64, (64, 64), 64, args.steps)
    else:
        spec = (784, (1024, 1024), 256, args.large_steps)
    if args.quick:
        spec = (QUICK_WIDTH, (QUICK_WIDTH, QUICK_WIDTH), spec[2], spec[3])
    return spec


def stack():
    """The callbacks a run usually carries, all nnkit's, at their defaults."""
    return [
        EarlyStopping(monitor="loss", patience=1000),
        ReduceLROnPlateau(monitor="loss", patience=1000),
        LearningRateMonitor(),
        GradientNormMonitor(),
    ]


class TimedBackup(BackupAndRestore):
    """``BackupAndRestore`` that times each backup it writes."""

    def __init__(self, backup_dir):
        super().__init__(backup_dir)
        self.seconds = []

    def write_due(self, hook):
        start = time.perf_counter()
        due = self._due is not None and hook in self._due[2]
        super().write_due(hook)
        if due:
            self.seconds.append(time.perf_counter() - start)


def bench_model(name, args):
    features, hidden, batch, steps = spec_of(name, args)
    per_epoch = steps // args.epochs
    x, y = make_data(args.seed, per_epoch * batch, features)
    models = {config: build(features, hidden, args.seed) for config in ("baseline", "stack")}
    step_s = {config: [] for config in models}
    cpu_s = {config: [] for config in models}
    fit_s = {config: [] for config in models}
    first = {}

    def timed_fit(config, extra=(), epochs=None):
        timer = EpochTimer()
        callbacks = [*(stack() if config == "stack" else []), *extra, timer]
        start = time.perf_counter()
        models[config].fit(x, y, batch_size=batch, epochs=epochs or 1 + args.epochs,
                           callbacks=callbacks, verbose=0)  # fmt: skip
        return time.perf_counter() - start, timer

    for config in models:  # the first fit of each model: it traces
        seconds, timer = timed_fit(config, epochs=1)
        first[config] = {"first_fit_s": round(seconds, 3), "first_epoch_s": round(timer.wall[0], 3)}

    ratios, fit_ratios, cpu_ratios, drift = [], [], [], []

    def measured(config):
        seconds, timer = timed_fit(config)
        step_s[config].append(sum(timer.wall[1:]) / steps)
        cpu_s[config].append(sum(timer.cpu[1:]) / steps)
        fit_s[config].append(seconds)
        return step_s[config][-1], seconds, cpu_s[config][-1]

    for round_index in range(args.repeats):
        before = measured("baseline")
        value = measured("stack")
        after = measured("baseline")
        ratios.append(value[0] / ((before[0] + after[0]) / 2))
        fit_ratios.append(value[1] / ((before[1] + after[1]) / 2))
        cpu_ratios.append(value[2] / ((before[2] + after[2]) / 2))
        drift.append(abs(after[0] / before[0] - 1.0))
        print(f"{keras.backend.backend()} {name} round {round_index + 1}/{args.repeats}: "
              f"{ratios[-1]:.3f} (noise {drift[-1]:.3f})", file=sys.stderr)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        backup = TimedBackup(os.path.join(tmp, "backup"))
        timed_fit("stack", extra=[backup])
    return {
        "params": models["baseline"].count_params(),
        "batch_size": batch,
        "timed_steps": steps,
        "jit_compile": bool(models["baseline"].jit_compile),
        "baseline_step_ms": round(statistics.median(step_s["baseline"]) * 1e3, 4),
        "stack_step_ms": round(statistics.median(step_s["stack"]) * 1e3, 4),
        "ratio": round(statistics.median(ratios), 4),
        "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4),
        "ratio_best": round(min(step_s["stack"]) / min(step_s["baseline"]), 4),
        "noise": round(statistics.median(drift), 4),
        "fit_ratio": round(statistics.median(fit_ratios), 4),
        "cpu_ratio": round(statistics.median(cpu_ratios), 4),
        "baseline_cpu_step_ms": round(statistics.median(cpu_s["baseline"]) * 1e3, 4),
        "first_epoch": {
            **{f"{config}_{k}": v for config, f in first.items() for k, v in f.items()},
            "ratio": round(first["stack"]["first_epoch_s"] / first["baseline"]["first_epoch_s"], 4),
        },
        "backup_ms_per_save": round(statistics.median(backup.seconds) * 1e3, 3)
        if backup.seconds
        else None,
        "backup_saves": len(backup.seconds),
    }


def run_backend(args):
    load_before = load_average()
    models = {name: bench_model(name, args) for name in args.models}
    return {"models": models, "environment": environment(load_before, load_average())}


def run_child(backend, argv):
    """Run this script for ``backend`` in a subprocess; its JSON figures."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *argv, "--child"],
        env=env, capture_output=True, text=True, check=False, cwd=root,
    )  # fmt: skip
    sys.stderr.write(done.stderr[-2000:] if done.returncode else "")
    if done.returncode:
        raise RuntimeError(f"the {backend} run failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        figures = run_backend(args)
        print(json.dumps(figures, sort_keys=True))
        return figures
    child_argv = [a for a in argv if a != "--child"]
    results = {}
    for backend in args.backends:
        if backend == keras.backend.backend():
            results[backend] = run_backend(args)
        else:
            results[backend] = run_child(backend, child_argv)
    ratios = {
        f"{backend}/{name}": r["ratio"]
        for backend, res in results.items()
        for name, r in res["models"].items()
    }
    for key, ratio in ratios.items():
        backend, name = key.split("/")
        r = results[backend]["models"][name]
        print(f"{key:<18} ratio {ratio:.4f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}, "
              f"noise {r['noise']:.3f}, best {r['ratio_best']:.3f}, cpu {r['cpu_ratio']:.3f}); step {r['baseline_step_ms']:.3f} ms bare; "
              f"first epoch {r['first_epoch']['stack_first_epoch_s']:.2f} s vs "
              f"{r['first_epoch']['baseline_first_epoch_s']:.2f} s; "
              f"backup {r['backup_ms_per_save']} ms/save")  # fmt: skip
    figures = {
        "benchmark": "hot_path",
        "target_ratio": TARGET,
        "ratios": ratios,
        "all_within_target": all(r <= TARGET for r in ratios.values()),
        "backends": results,
        "settings": {
            "repeats": args.repeats,
            "steps": args.steps,
            "large_steps": args.large_steps,
            "epochs": args.epochs,
            "seed": args.seed,
            "quick": args.quick,
            "stack": [type(c).__name__ for c in stack()],
            "method": "per-step time of epochs 1..E, B S B rounds, median of paired ratios",
        },
    }
    print(json.dumps(figures, sort_keys=True))
    return figures


if __name__ == "__main__":
    main()

"""Cost of one meta-iteration of ``nnkit.meta`` against a plain ``fit`` step, per backend.

Question: how much slower is one meta-iteration (a ``fit`` step on a batch of
25 sinusoid tasks) of each learner than one plain ``fit`` step of the same
network on the same number of examples, and how does its memory grow with
``inner_steps`` (1, 2, 5)? Goals (issue 13): first-order methods (first-order
MAML, ANIL and Meta-SGD here run first order, Reptile) at most 2× a plain step
*per inner step*; second-order MAML at most 4× per inner step.

Network: the sinusoid recipe's 1-40-40-1 ReLU MLP, MSE, Adam. Data: 25
tasks of K = 10 support and 10 query points per meta-batch; the plain step
fits the same 25 · 20 = 500 points as one batch. Learners: ``maml``
(second order), ``fomaml``, ``metasgd`` (first order, one rate per weight),
``anil`` (second order through the head ``head``), ``reptile``; each with
``inner_steps`` 1, 2 and 5. ``jit_compile`` is Keras's default.

Method, per backend: every configuration first runs one warm-up ``fit``
(tracing and compilation). Then, in each of ``--repeats`` rounds, the plain
fit and the configurations run in an order rotated from round to round, the
plain fit once before the others and once after; each timed ``fit`` runs
``--steps`` steps in one epoch, timed from ``on_epoch_begin`` to
``on_epoch_end``. A configuration's ratio in a round is its step time over
the mean of that round's two plain step times (bursts of load from other
processes on the shared machine cancel in part); the figures are medians
over the rounds. ``ratio`` is the meta-iteration over the plain step,
``ratio_per_inner_step`` that divided by ``inner_steps``; the goal is met
when ``ratio_per_inner_step`` is within it.

Memory: the CPU has no allocator statistics on TensorFlow
(``tf.config.experimental.get_memory_info("CPU:0")`` raises "Allocator stats
not available"), and ``tracemalloc`` sees only Python's own allocations, not
the backends'. The figure is therefore XLA's: on JAX, the temporary buffer
bytes of the compiled train step (``jax.jit(model.train_step).lower(...)
.compile().memory_analysis().temp_size_in_bytes``), exact and deterministic,
the memory the step needs beyond its inputs and outputs;
``memory_ratio`` is that over the plain step's. On TensorFlow the process's
peak resident set size (``ru_maxrss``) is recorded before and after each
configuration's warm-up fit (``peak_rss_growth_kib``: how much that fit
raised the process's high-water mark, 0 when it stayed under an earlier
peak): a coarse figure, dominated by the allocator and by TensorFlow's
graph caches, not by the tensors of one step.

Backends: the script measures its own process's backend (TensorFlow by
default); on TensorFlow it also runs itself in a subprocess with
``KERAS_BACKEND=jax`` (``--no-jax`` skips it) and puts both side by side.

Usage::

    python bench/meta_overhead.py          # full run (several minutes on 2 CPU cores)
    python bench/meta_overhead.py --quick  # smoke test

The last line of stdout is one JSON object with every figure (the convention
of every ``bench/`` script).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nnkit.meta import ANIL, MAML, MetaSGD, Reptile, sinusoid_family  # noqa: E402

try:  # imported from the repository root (the smoke tests)
    from bench._timing import environment, load_average, set_threads  # noqa: E402
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    from _timing import environment, load_average, set_threads  # noqa: E402

ALGORITHMS = ("maml", "fomaml", "metasgd", "anil", "reptile")
SECOND_ORDER = ("maml", "anil")
#: Goal on ``ratio_per_inner_step``: second-order MAML 4×, first-order methods 2×.
GOALS = {"maml": 4.0, "fomaml": 2.0, "metasgd": 2.0, "reptile": 2.0}
INNER_STEPS = (1, 2, 5)
TASKS = 25
SHOTS = 10


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of every epoch, from the epoch hooks only."""

    def __init__(self):
        super().__init__()
        self.wall = []

    def on_epoch_begin(self, epoch, logs=None):
        self._wall = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.wall.append(time.perf_counter() - self._wall)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per fit")
    parser.add_argument(
        "--algorithms", default=",".join(ALGORITHMS), help="subset of: " + ", ".join(ALGORITHMS)
    )
    parser.add_argument(
        "--inner-steps", default=",".join(map(str, INNER_STEPS)), help="comma-separated"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: default)")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX subprocess")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps = 1, 2
    if args.repeats < 1 or args.steps < 1:
        parser.error("need --repeats >= 1 and --steps >= 1")
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = sorted(set(args.algorithms) - set(ALGORITHMS))
    if unknown or not args.algorithms:
        parser.error(f"unknown --algorithms {unknown}; choose from {', '.join(ALGORITHMS)}")
    try:
        args.inner_steps = [int(s) for s in args.inner_steps.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--inner-steps must be comma-separated ints. Received: {args.inner_steps}")
    if not args.inner_steps or min(args.inner_steps) < 1:
        parser.error("--inner-steps must be ints >= 1")
    return args


def network(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(40, "relu"), keras.layers.Dense(40, "relu"),
         keras.layers.Dense(1, name="head")]
    )  # fmt: skip


def make_model(config, seed):
    """A compiled model for ``config``: ``"plain"`` or ``(algorithm, inner_steps)``."""
    if config == "plain":
        model = network(seed)
    else:
        algorithm, steps = config
        net = network(seed)
        if algorithm == "maml":
            model = MAML(net, inner_learning_rate=0.01, inner_steps=steps)
        elif algorithm == "fomaml":
            model = MAML(net, inner_learning_rate=0.01, inner_steps=steps, first_order=True)
        elif algorithm == "metasgd":
            model = MetaSGD(net, inner_learning_rate=0.01, inner_steps=steps, first_order=True)
        elif algorithm == "anil":
            model = ANIL(net, head="head", inner_learning_rate=0.01, inner_steps=steps)
        else:
            model = Reptile(net, inner_learning_rate=0.01, inner_steps=steps)
    model.compile(keras.optimizers.Adam(1e-3), loss="mse")
    return model


def make_data(seed, steps):
    """``(tasks, y_query, x, y)``: ``steps`` meta-batches and the same points pooled."""
    tasks, y_query = sinusoid_family(shots=SHOTS, queries=SHOTS).sample(TASKS * steps, seed=seed)
    x = np.concatenate([tasks["x_support"], tasks["x_query"]], axis=1).reshape(-1, 1)
    y = np.concatenate([tasks["y_support"], y_query], axis=1).reshape(-1, 1)
    return tasks, y_query, x, y


def timed_fit(model, config, data):
    """Seconds per step of one ``fit`` epoch."""
    tasks, y_query, x, y = data
    timer = EpochTimer()
    if config == "plain":
        model.fit(x, y, batch_size=TASKS * 2 * SHOTS, shuffle=False, verbose=0, callbacks=[timer])
        steps = len(x) // (TASKS * 2 * SHOTS)
    else:
        model.fit(tasks, y_query, batch_size=TASKS, shuffle=False, verbose=0, callbacks=[timer])
        steps = len(y_query) // TASKS
    return timer.wall[0] / steps


def peak_rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def jax_temp_bytes(model, config, data):
    """XLA's temporary bytes of the compiled JAX train step on one batch."""
    import jax

    tasks, y_query, x, y = data
    if config == "plain":
        batch = (x[: TASKS * 2 * SHOTS], y[: TASKS * 2 * SHOTS])
    else:
        batch = ({k: a[:TASKS] for k, a in tasks.items()}, y_query[:TASKS])
    state = (
        [w.value for w in model.trainable_variables],
        [w.value for w in model.non_trainable_variables],
        [w.value for w in model.optimizer.variables],
        [w.value for w in model.metrics_variables],
    )
    compiled = jax.jit(model.train_step).lower(state, batch).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def name_of(config):
    return config if config == "plain" else f"{config[0]}_k{config[1]}"


def bench_backend(args):
    """Every figure of this process's backend."""
    backend = keras.backend.backend()
    set_threads(args.threads)
    configs = ["plain"] + [(a, k) for a in args.algorithms for k in args.inner_steps]
    data = make_data(args.seed, args.steps)
    models, memory = {}, {}
    for config in configs:
        before = peak_rss_kib()
        models[config] = make_model(config, args.seed)
        timed_fit(models[config], config, data)  # warm-up: tracing, compilation, optimizer
        memory[config] = {"peak_rss_growth_kib": peak_rss_kib() - before}
        if backend == "jax":
            memory[config]["xla_temp_bytes"] = jax_temp_bytes(models[config], config, data)
    ratios = {config: [] for config in configs[1:]}
    step_s = {config: [] for config in configs}
    for round_index in range(args.repeats):
        shift = round_index % (len(configs) - 1)
        order = configs[1:][shift:] + configs[1:][:shift]
        plain_before = timed_fit(models["plain"], "plain", data)
        times = {config: timed_fit(models[config], config, data) for config in order}
        plain_after = timed_fit(models["plain"], "plain", data)
        plain = (plain_before + plain_after) / 2
        step_s["plain"].append(plain)
        for config, seconds in times.items():
            step_s[config].append(seconds)
            ratios[config].append(seconds / plain)
    results = {}
    for config in configs:
        entry = {"step_ms": 1e3 * statistics.median(step_s[config]), **memory[config]}
        if config != "plain":
            algorithm, steps = config
            ratio = statistics.median(ratios[config])
            entry.update(
                algorithm=algorithm,
                inner_steps=steps,
                ratio=ratio,
                ratio_min=min(ratios[config]),
                ratio_max=max(ratios[config]),
                ratio_per_inner_step=ratio / steps,
                goal_per_inner_step=GOALS.get(algorithm),
                within_goal=None
                if algorithm not in GOALS
                else bool(ratio / steps <= GOALS[algorithm]),
            )
            if "xla_temp_bytes" in entry and memory["plain"]["xla_temp_bytes"]:
                entry["memory_ratio"] = entry["xla_temp_bytes"] / memory["plain"]["xla_temp_bytes"]
        results[name_of(config)] = entry
    return {"backend": backend, "configs": results}


def run_jax(argv):
    """This script's figures on JAX, from a subprocess (``None`` and the error if it failed)."""
    env = dict(os.environ, KERAS_BACKEND="jax")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, os.path.abspath(__file__), *argv, "--no-jax"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, done.stderr[-2000:]
    return json.loads(lines[-1])["backends"]["jax"], None


def summary_lines(backends):
    lines = []
    for backend, figures in backends.items():
        plain = figures["configs"]["plain"]["step_ms"]
        lines.append(f"{backend}: plain fit step {plain:.2f} ms (500 points)")
        for name, entry in figures["configs"].items():
            if name == "plain":
                continue
            goal = entry["goal_per_inner_step"]
            verdict = "" if goal is None else (" ok" if entry["within_goal"] else " OVER GOAL")
            memory = (
                f", XLA temp {entry['xla_temp_bytes'] / 1024:.0f} KiB "
                f"({entry['memory_ratio']:.1f}x plain)"
                if "memory_ratio" in entry
                else f", peak RSS +{entry['peak_rss_growth_kib']} KiB"
            )
            goal_text = "" if goal is None else f" (goal {goal:g}x)"
            lines.append(
                f"  {name:>12}: {entry['step_ms']:8.2f} ms = {entry['ratio']:6.2f}x plain, "
                f"{entry['ratio_per_inner_step']:5.2f}x per inner step{goal_text}{verdict}{memory}"
            )
    return lines


def main(argv=None):
    """Run the benchmark; print a summary and, last, one JSON line; return the figures."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    load_before = load_average()
    backends = {keras.backend.backend(): bench_backend(args)}
    errors = {}
    if keras.backend.backend() == "tensorflow" and not args.no_jax:
        jax_figures, error = run_jax(argv)
        if jax_figures is None:
            errors["jax"] = error
        else:
            backends["jax"] = jax_figures
    checked = [
        entry["within_goal"]
        for figures in backends.values()
        for entry in figures["configs"].values()
        if entry.get("within_goal") is not None
    ]
    figures = {
        "backends": backends,
        "goals_per_inner_step": GOALS,
        "all_within_goal": all(checked),
        "settings": {
            "tasks": TASKS,
            "shots": SHOTS,
            "queries": SHOTS,
            "repeats": args.repeats,
            "steps": args.steps,
            "inner_steps": args.inner_steps,
            "algorithms": args.algorithms,
            "memory": "jax: XLA temp bytes of the compiled train step; "
            "tensorflow: peak RSS growth during the warm-up fit (coarse)",
        },
        "errors": errors,
        "environment": environment(load_before, load_average()),
    }
    for line in summary_lines(backends):
        print(line)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()

"""Second-order optimizers against tuned Adam: steps to target, step time, refresh time.

Questions (issue 12), on the digits deep autoencoder of
``recipes/second_order.py`` (same model, data, loss and table of optimizers,
``OPTIMIZERS``; a new method is one more row there), TensorFlow backend on CPU:

1. ``steps_to_target``: steps (and wall seconds) to reach tuned Adam's final
   training loss, each optimizer at its best learning rate from the recipe's
   sweep, relative to Adam (mean over ``--seeds``). Goal: Shampoo and SOAP
   ``<= 1/1.5`` of Adam's steps. ``--summary`` takes these figures from the
   autoencoder of a recipe run (its ``summary.json``) instead of sweeping
   again.
2. ``step_time``: time of one training step at the default cadences
   (``Shampoo``: roots every 20 steps; ``SOAP``: basis every 10; ``KFAC``:
   inverses every 20), relative to Adam on the same model and batch. Goal:
   ``<= 1.3``.
3. ``refresh``: the time of one preconditioner refresh, and which way of
   doing periodic work is cheaper. Three train functions of the same model:
   ``cond`` (the default: a value-returning ``ops.cond`` decides in-graph
   every step), ``never`` and ``always`` (the choice fixed when tracing, with
   ``nnkit.optimizers._base.forced_refresh``: the two train functions a
   host-side choice would switch between). ``refresh_seconds = always −
   never``; the host-side alternative costs at least ``never + refresh/f``
   per step (``f = refresh_every``; the host's switching not counted),
   against ``cond``'s measured step. (Shampoo and SOAP here: KFAC's refresh
   goes through the same ``SecondOrderOptimizer.periodic``, so
   ``forced_refresh`` fixes it too, but this bench does not time it.)

Method for step times: each configuration is a fresh model (same seed) fitted
for ``1 + --epochs`` epochs of ``--steps`` steps on the digits repeated; a
timing callback (epoch hooks only) records each epoch's wall time; epoch 0
(tracing) is dropped, and a configuration's step time is the median epoch
time over the steps. Configurations run in ``--repeats`` rounds, Adam before
and after each one (``A c A``), and a ratio is the configuration's time over
the mean of the two Adam runs around it; figures are medians over rounds.

The machine may be shared: the load average before and after is in the JSON.

Usage::

    python bench/second_order.py          # full run (minutes on 2 CPU cores)
    python bench/second_order.py --quick  # smoke test (seconds)

The last line printed is one JSON object with every figure.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

try:
    from bench._timing import environment, load_average, set_threads  # noqa: E402
except ModuleNotFoundError:  # run as a script: bench/ is on sys.path
    from _timing import environment, load_average, set_threads  # noqa: E402

from nnkit.optimizers import SOAP, Shampoo  # noqa: E402
from nnkit.optimizers._base import forced_refresh  # noqa: E402

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "second_order.py"
PRECONDITIONED = {"shampoo": Shampoo, "soap": SOAP}


def load_recipe():
    spec = importlib.util.spec_from_file_location("second_order_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40, help="epochs per run for steps to target")
    parser.add_argument("--seeds", type=int, default=3, help="seeds at the best rate, >= 3")
    parser.add_argument("--steps", type=int, default=60, help="steps per timed epoch")
    parser.add_argument("--timed-epochs", type=int, default=3, help="timed epochs per fit")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of A c A timings")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: default)")
    parser.add_argument(
        "--optimizers", default=None, help="rows of the recipe's table (default: all)"
    )
    parser.add_argument(
        "--summary",
        default=None,
        help="summary.json of a recipe run: its autoencoder gives the steps to target",
    )
    parser.add_argument(
        "--out",
        default=os.path.join("runs", "second_order_bench"),
        help="the recipe's output folder for the sweep's studies (default runs/second_order_bench)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test (seconds)")
    args = parser.parse_args(argv)
    if args.seeds < 3:
        parser.error("--seeds must be >= 3 (the recipe's reruns give a noise floor)")
    for name in ("epochs", "steps", "timed_epochs", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.quick:
        args.epochs, args.seeds, args.steps, args.timed_epochs, args.repeats = 3, 3, 20, 1, 1
    return args


class _EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def step_time(recipe, optimizer, data, args, context=contextlib.nullcontext):
    """Median seconds per step of a fresh autoencoder trained with ``optimizer``.

    ``optimizer`` is an optimizer, or a function of the model that makes one
    (KFAC registers the model it preconditions).
    """
    model = recipe.build_model("autoencoder", 0)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer = optimizer(model)
    model.compile(optimizer, loss="binary_crossentropy")
    rows = args.steps * recipe.BATCH_SIZE
    x = np.resize(data["x"], (rows, data["x"].shape[1]))
    timer = _EpochTimes()
    with context():
        model.fit(
            x, x, batch_size=recipe.BATCH_SIZE, epochs=1 + args.timed_epochs, shuffle=False,
            verbose=0, callbacks=[timer],
        )  # fmt: skip
    return statistics.median(timer.times[1:]) / args.steps


def paired(recipe, configs, data, args):
    """``{name: (median ratio to Adam, median seconds per step)}`` from ``A c A`` rounds."""
    ratios = {name: [] for name in configs}
    seconds = {name: [] for name in configs}
    names = list(configs)
    for round_ in range(args.repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        before = step_time(recipe, keras.optimizers.Adam(1e-3), data, args)
        for name in order:
            make, context = configs[name]
            own = step_time(recipe, make(), data, args, context)
            after = step_time(recipe, keras.optimizers.Adam(1e-3), data, args)
            ratios[name].append(own / ((before + after) / 2))
            seconds[name].append(own)
            before = after
    return {
        name: (statistics.median(ratios[name]), statistics.median(seconds[name])) for name in names
    }


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    recipe = load_recipe()
    data = recipe.load_data()
    load_before = load_average()
    figures = {"args": vars(args)}

    # 1. Steps to target, through the recipe's own sweep and reruns.
    recipe_args = recipe.parse_args(
        ["--problems", "autoencoder", "--epochs", str(args.epochs), "--seeds", str(args.seeds)]
        + ["--out", args.out]
        + (["--optimizers", args.optimizers] if args.optimizers else [])
        + (["--quick"] if args.quick else [])
    )
    if args.summary is None:
        outcome = recipe.run_problem("autoencoder", recipe_args, data)
    else:
        summary = json.loads(pathlib.Path(args.summary).read_text(encoding="utf-8"))
        outcome = summary["problems"]["autoencoder"]
        missing = [n for n in recipe_args.optimizers if n not in outcome["optimizers"]]
        if missing:
            raise ValueError(
                f"{args.summary} has no autoencoder results for {missing}. "
                f"Received: summary={args.summary!r}"
            )
        outcome["optimizers"] = {n: outcome["optimizers"][n] for n in recipe_args.optimizers}
        figures["steps_to_target_from"] = {"summary": args.summary, "args": summary["args"]}
    chosen = {n: c for n, c in PRECONDITIONED.items() if n in recipe_args.optimizers}
    adam = outcome["optimizers"][recipe.BASELINE]
    to_target = {"target_loss": outcome["target_loss"]}
    for name, result in outcome["optimizers"].items():
        steps, seconds = result["steps_to_target"][0], result["seconds_to_target"][0]
        to_target[name] = {
            "best_learning_rate": result["best_learning_rate"],
            "steps": steps,
            "seconds": seconds,
            "steps_ratio": None if steps is None else steps / adam["steps_to_target"][0],
            "seconds_ratio": None if seconds is None else seconds / adam["seconds_to_target"][0],
            "seeds_reaching_target": result["seeds_reaching_target"],
            "final_loss": result["final_loss"][0],
        }
    figures["steps_to_target"] = to_target

    # 2. Step time at the default cadences, relative to Adam.
    configs = {
        name: (lambda cls=cls: cls(1e-3), contextlib.nullcontext) for name, cls in chosen.items()
    }
    if "kfac" in recipe_args.optimizers:
        # The fixed-rate step, the adaptive step with the empirical Fisher (the
        # extra forward-mode pass), and the default (adaptive, sampled Fisher: one
        # more forward and backward pass per step).
        kfac_rows = {
            "kfac_fixed": lambda model: recipe.make_kfac(1e-3, model),
            "kfac_adaptive_empirical": lambda model: recipe.make_kfac_adaptive(
                1.0, model, fisher="empirical"
            ),
            "kfac": lambda model: recipe.make_kfac_adaptive(1.0, model),
        }
        for name, make in kfac_rows.items():
            configs[name] = (lambda make=make: make, contextlib.nullcontext)
    figures["step_time"] = {
        name: {"ratio_to_adam": ratio, "seconds_per_step": seconds}
        for name, (ratio, seconds) in paired(recipe, configs, data, args).items()
    }

    times = figures["step_time"]
    if "kfac" in times:
        per_step = {name: times[name]["seconds_per_step"] for name in kfac_rows}
        figures["kfac_costs"] = {
            "adaptive_over_fixed": per_step["kfac_adaptive_empirical"] / per_step["kfac_fixed"],
            "sampled_pass_over_adaptive": per_step["kfac"] / per_step["kfac_adaptive_empirical"],
            "default_over_fixed": per_step["kfac"] / per_step["kfac_fixed"],
        }

    # 3. One refresh, and the in-graph cond against the host-side choice.
    refresh = {}
    for name, cls in chosen.items():
        times = {}
        for mode, forced in (("cond", None), ("never", False), ("always", True)):
            optimizer = cls(1e-3)
            context = (
                contextlib.nullcontext
                if forced is None
                else (lambda o=optimizer, f=forced: forced_refresh(o, f))
            )
            times[mode] = step_time(recipe, optimizer, data, args, context)
        every = cls(1e-3).refresh_every
        refresh_seconds = times["always"] - times["never"]
        host = times["never"] + refresh_seconds / every
        refresh[name] = {
            "refresh_every": every,
            "cond_seconds_per_step": times["cond"],
            "never_seconds_per_step": times["never"],
            "always_seconds_per_step": times["always"],
            "refresh_seconds": refresh_seconds,
            "host_choice_seconds_per_step_lower_bound": host,
            "cond_over_host_choice": times["cond"] / host if host > 0 else None,
        }
    figures["refresh"] = refresh
    figures["environment"] = environment(load_before, load_average())

    for name in chosen:
        t, s, r = to_target[name], figures["step_time"][name], refresh[name]
        print(
            f"{name}: steps to target x{t['steps_ratio'] or float('nan'):.2f} of Adam's, step time "
            f"x{s['ratio_to_adam']:.2f} of Adam's, one refresh {r['refresh_seconds'] * 1e3:.2f} ms, "
            f"cond / host choice {r['cond_over_host_choice']:.2f}"
        )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

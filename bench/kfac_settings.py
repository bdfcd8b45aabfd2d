"""A short search of K-FAC's settings on the digits deep autoencoder, at its best rate.

K-FAC lost to tuned Adam with the recipe's first settings; this gives it an
honest best shot. Starting from ``KFAC_SETTINGS`` of ``recipes/second_order.py``
(same model, data, loss and batch), it changes one setting at a time: damping
``λ`` (1e-3, 1e-2, 1e-1), damping type (``tikhonov``, ``pi``, ``eigen``), the
output layer's factor (``exact`` Gauss-Newton or ``empirical``), the inverse
cadence (``refresh_every`` 5, 20, 50) and the KL clip (1e-4, 1e-3, 1e-2,
none); ``--combine`` adds settings made of several changes, written
``key=value`` joined by ``,`` (``--combined-only``: those alone, e.g. a
damping at another ``--learning-rate``). Each setting trains ``--seeds`` seeds at the
learning rate and against the target of a recipe run (``--summary``: its
``summary.json``: K-FAC's best rate and the target, 1.05 × tuned Adam's final
training loss), for the recipe's epochs.

Usage::

    python recipes/second_order.py --problems autoencoder --optimizers adam,kfac
    python bench/kfac_settings.py --summary runs/second_order/summary.json

It prints one row per setting (final training loss, steps and seconds to
the target, mean ± standard deviation over the seeds, seeds reaching it);
the last line is one JSON object with every figure.
"""

import argparse
import importlib.util
import json
import math
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "second_order.py"
CHANGES = {
    "damping": (1e-3, 1e-2, 1e-1),
    "damping_type": ("tikhonov", "pi", "eigen"),
    "output_fisher": ("exact", "empirical"),
    "refresh_every": (5, 20, 50),
    "kl_clip": (1e-4, 1e-3, 1e-2, None),
}


def load_recipe():
    spec = importlib.util.spec_from_file_location("second_order_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _value(text):
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", required=True, help="summary.json of a recipe run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per setting (default 3)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="instead of the summary's best K-FAC rate")  # fmt: skip
    parser.add_argument(
        "--combine", action="append", default=[],
        help="one more setting, e.g. damping=0.1,damping_type=pi (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--combined-only", action="store_true",
        help="try only the --combine settings (e.g. a damping at another rate)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    combined = []
    for text in args.combine:
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        if not pairs or any(len(pair) != 2 or pair[0] not in CHANGES for pair in pairs):
            parser.error(f"--combine: key=value pairs of {list(CHANGES)}. Received: {text!r}")
        combined.append({key: _value(value) for key, value in pairs})
    args.combine = combined
    return args


def settings_to_try(base, combined, combined_only=False):
    """The base settings, each one-setting change of it, then the combined ones."""
    if combined_only:
        return list(combined)
    tried = [{}]
    for key, values in CHANGES.items():
        tried += [{key: value} for value in values if value != base[key]]
    return tried + combined


def run_setting(recipe, change, learning_rate, target, seeds, epochs, data):
    """Train the autoencoder with ``KFAC_SETTINGS`` updated by ``change``, once per seed."""
    recorder = recipe._Recorder(math.ceil(len(data["x"]) / recipe.BATCH_SIZE))
    for seed in range(seeds):
        model = recipe.build_model("autoencoder", seed)
        model.compile(recipe.make_kfac(learning_rate, model, **change), loss="binary_crossentropy")
        model.fit(
            data["x"], data["x"], batch_size=recipe.BATCH_SIZE, epochs=epochs, verbose=0,
            callbacks=[recorder],
        )  # fmt: skip
    reached = [recipe.to_target(run, target) for run in recorder.runs]
    return {
        "change": change,
        "settings": {**recipe.KFAC_SETTINGS, **change},
        "final_loss": recipe._mean_std([run["loss"][-1] for run in recorder.runs]),
        "steps_to_target": recipe._mean_std([steps for steps, _ in reached]),
        "seconds_to_target": recipe._mean_std([seconds for _, seconds in reached]),
        "seeds_reaching_target": sum(steps is not None for steps, _ in reached),
    }


def main(argv=None):
    args = parse_args(argv)
    recipe = load_recipe()
    summary = json.loads(pathlib.Path(args.summary).read_text(encoding="utf-8"))
    outcome = summary["problems"]["autoencoder"]
    target = outcome["target_loss"]
    learning_rate = args.learning_rate
    if learning_rate is None:
        learning_rate = outcome["optimizers"]["kfac"]["best_learning_rate"]
    epochs = summary["args"]["epochs"]
    data = recipe.load_data()
    rows = []
    print(f"K-FAC at learning rate {learning_rate:g}, {epochs} epochs, target {target:.4f}")
    for change in settings_to_try(recipe.KFAC_SETTINGS, args.combine, args.combined_only):
        row = run_setting(recipe, change, learning_rate, target, args.seeds, epochs, data)
        rows.append(row)
        label = ", ".join(f"{k}={v}" for k, v in change.items()) or "base"
        print(
            f"{label:<34} final {recipe._fmt(row['final_loss'], 4):>17}  steps "
            f"{recipe._fmt(row['steps_to_target']):>13}  seconds "
            f"{recipe._fmt(row['seconds_to_target'], 2):>13}  "
            f"reached {row['seeds_reaching_target']}/{args.seeds}",
            flush=True,
        )
    figures = {
        "learning_rate": learning_rate,
        "epochs": epochs,
        "target_loss": target,
        "base": recipe.KFAC_SETTINGS,
        "backend": keras.backend.backend(),
        "rows": rows,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

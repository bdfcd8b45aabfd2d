"""Draw docs/img/lr_finder_digits.png: lr_find against a 15-rate sweep on three problems.

Run from the repository root, with the JSON line of a bench run:

    .venv/bin/python bench/lr_sensitivity.py | tail -1 > lr_bench.json
    .venv/bin/python docs/scripts/plot_lr_finder_digits.py lr_bench.json

Top row: ``lr_find`` with its defaults (100 steps over 1e-7 … 10, batch
order ``seed=0``) on the bench's three problems (the digits MLP, the digits
autoencoder, the small CNN; Adam), each rule's suggestion marked. Bottom
row, from the bench's JSON: the final validation loss of each swept rate
(10 epochs), the band within 10 % of the best, and the loss of the run
trained at each rule's suggestion (batch order 0).
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import keras  # noqa: E402
import lr_sensitivity as bench  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nnkit.tuning import lr_find  # noqa: E402

OUT = ROOT / "docs" / "img" / "lr_finder_digits.png"
COLORS = {"minimum": "tab:green", "steepest": "tab:red", "valley": "tab:purple"}
TITLES = {"digits_mlp": "digits MLP", "digits_autoencoder": "digits autoencoder",
          "small_cnn": "small CNN"}  # fmt: skip


def main(path):
    figures = json.loads(pathlib.Path(path).read_text())["lr_find_vs_sweep"]
    (x, y), _ = bench.digits()
    figure = Figure(figsize=(12, 6.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3)
    for column, problem in enumerate(bench.PROBLEMS):
        model = bench.build(problem, 0, keras.optimizers.Adam(1e-3))
        result = lr_find(model, x, bench.targets(problem, x, y), batch_size=bench.BATCH)
        top, bottom = axes[0, column], axes[1, column]
        top.plot(result.learning_rates, result.losses, alpha=0.35, label="loss (per batch)")
        top.plot(result.learning_rates, result.smoothed, label="smoothed")
        start = result.smoothed[0]
        top.set_ylim(0.0, 1.6 * start)
        figure_row = figures[problem]
        for rule, rate in result.suggestions.items():
            if rate is not None:
                top.axvline(rate, color=COLORS[rule], linestyle="--", label=f"{rule}: {rate:.2g}")
        best = figure_row["best_swept_rate"]
        top.axvline(best, color="black", alpha=0.4, linewidth=3, label=f"swept best: {best:.2g}")
        top.set_title(f"{TITLES[problem]}: lr_find ({len(result.losses)} steps)", fontsize=10)
        sweep = {float(rate): loss for rate, loss in figure_row["sweep"].items()}
        rates = sorted(sweep)
        best_loss = figure_row["best_swept_loss"]
        bottom.plot(rates, [sweep[r] for r in rates], "o-", color="black", alpha=0.6,
                    label="15-rate sweep")  # fmt: skip
        bottom.axhspan(best_loss, 1.1 * best_loss, color="gold", alpha=0.4, label="within 10 %")
        for rule, values in figure_row["rules"].items():
            rate, loss = values["suggestions"][0], values["losses"][0]
            if rate is not None:
                bottom.plot([rate], [loss], "D", color=COLORS[rule], markersize=8,
                            label=f"at {rule}: ×{loss / best_loss:.2f}")  # fmt: skip
        bottom.set_yscale("log")
        bottom.set_ylabel("validation loss, 10 epochs")
        for axis in (top, bottom):
            axis.set_xscale("log")
            axis.set_xlabel("learning rate")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        top.set_xlim(1e-7, 10.0)
        bottom.set_xlim(5e-5, 2.0)
    figure.savefig(OUT, dpi=80, metadata={"Software": None})
    print(OUT.relative_to(ROOT))  # noqa: T201 (a script)


if __name__ == "__main__":
    main(sys.argv[1])

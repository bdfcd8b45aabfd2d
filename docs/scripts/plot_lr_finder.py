"""Draw docs/img/lr_finder.png: the range test on linear regression with a known answer.

Run from the repository root:

    .venv/bin/python docs/scripts/plot_lr_finder.py

The problem is the one of tests/tuning/_lr_finder_checks.py: SGD on linear
regression, whose largest stable rate is 2/λ_max of the Hessian (here 1.0),
drawn as a grey line beside the suggestions.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nnkit.tuning import lr_find  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "img" / "lr_finder.png"


def main():
    rng = np.random.default_rng(0)
    n = 1024
    x = rng.normal(size=(n, 3))
    q, _ = np.linalg.qr(x - x.mean(axis=0))
    x = (q * np.sqrt(n) * np.array([1.0, 0.7, 0.5])).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 + 0.1 * rng.normal(size=(n, 1))).astype(
        "float32"
    )
    augmented = np.hstack([x, np.ones((n, 1))]).astype("float64")
    critical = 2.0 / np.linalg.eigvalsh(2.0 / n * augmented.T @ augmented).max()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    result = lr_find(model, x, y, batch_size=128, steps=60, learning_rates=(1e-3, 10.0))
    figure = result.plot()
    figure.axes[0].axvline(critical, color="grey", linewidth=2, alpha=0.5,
                           label=f"2/λ_max = {critical:.3g}")  # fmt: skip
    figure.axes[0].legend(fontsize=8)
    figure.savefig(OUT, dpi=90, metadata={"Software": None})
    print(OUT.relative_to(OUT.parents[2]))  # noqa: T201 (a script)


if __name__ == "__main__":
    main()

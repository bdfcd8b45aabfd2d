"""Few-shot sinusoid regression: MAML, first-order MAML and Reptile against pretraining + fine-tuning.

The task family is Finn et al.'s (2017): ``y = A sin(x − φ)`` with
``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``, ``x ~ U[−5, 5]``; each task gives K = 10
support points. The network is 1-40-40-1 with ReLU; the inner step is SGD with
α = 0.01. Four ways of getting initial weights are compared, each adapted the
same way (α = 0.01 SGD on the support set, via ``predict_adapted``):

- ``maml``: second-order MAML, one inner step, Adam(1e-3) outer optimizer;
- ``fomaml``: the same, first order;
- ``reptile``: Reptile, 5 inner steps, ``SGD(1.0)`` outer step;
- ``pretrained`` (the baseline): the same network fitted to points pooled over
  all training tasks (the same number of tasks and points), then fine-tuned.

It reports the query MSE after 0, 1 and 10 adaptation steps on held-out tasks
(600 by default) over several seeds (mean ± standard deviation), and says
which is best. It writes ``--out`` (default ``runs/meta_sinusoid``)::

    metrics.json    per method and step count: mean, std and each seed's MSE
    adapted.png     a few held-out tasks: truth, support points, each method
                    after 10 steps (first seed)

``--quick`` runs a tiny version (for the tests). Run with ``--help`` for the
options.
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from nnkit.meta import MAML, Reptile, sinusoid_family

STEPS = (0, 1, 10)
METHODS = ("maml", "fomaml", "reptile", "pretrained")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--meta-steps", type=int, default=7000, help="meta-batches of training")
    parser.add_argument("--tasks-per-batch", type=int, default=25)
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--inner-learning-rate", type=float, default=0.01)
    parser.add_argument("--out", default="runs/meta_sinusoid")
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        args.meta_steps, args.tasks_per_batch, args.test_tasks, args.seeds = 4, 5, 20, 1
    return args


def network(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(40, "relu"), keras.layers.Dense(40, "relu"),
         keras.layers.Dense(1)]
    )  # fmt: skip


def learner(method, seed, args):
    net = network(seed)
    alpha = args.inner_learning_rate
    if method == "reptile":
        model = Reptile(net, inner_learning_rate=alpha, inner_steps=5)
        model.compile(keras.optimizers.SGD(1.0), loss="mse")
    else:
        model = MAML(net, inner_learning_rate=alpha, first_order=method == "fomaml")
        model.compile(keras.optimizers.Adam(1e-3), loss="mse")
    return model


def train(method, seed, args, family):
    batches = family.batches(args.tasks_per_batch, args.meta_steps, seed=seed)
    if method != "pretrained":
        model = learner(method, seed, args)
        model.fit(batches, epochs=1, verbose=0)
        return model
    # The baseline sees the same tasks, every point pooled into one regression.
    net = network(seed)
    net.compile(keras.optimizers.Adam(1e-3), loss="mse")
    xs, ys = [], []
    for index in range(len(batches)):
        inputs, y_query = batches[index]
        xs += [inputs["x_support"], inputs["x_query"]]
        ys += [inputs["y_support"], y_query]
    points = args.shots * 2
    x = np.concatenate(xs).reshape(-1, 1)
    y = np.concatenate(ys).reshape(-1, 1)
    net.fit(x, y, batch_size=args.tasks_per_batch * points, epochs=1, shuffle=False, verbose=0)
    # Fine-tuning is the same inner loop as the learners' (MAML's predict_adapted).
    tuner = MAML(net, inner_learning_rate=args.inner_learning_rate)
    tuner.compile("sgd", loss="mse")
    return tuner


def evaluate(model, tasks, y_query):
    scores = {}
    for steps in STEPS:
        predictions = model.predict_adapted(
            tasks["x_support"], tasks["y_support"], tasks["x_query"], steps=steps, batch_size=100
        )
        scores[steps] = float(np.mean((predictions - y_query) ** 2))
    return scores


def plot(models, tasks, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-5, 5, 200, dtype="float32")[None, :, None]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for t, ax in enumerate(axes):
        support = (tasks["x_support"][t : t + 1], tasks["y_support"][t : t + 1])
        for method, model in models.items():
            y = model.predict_adapted(*support, grid, steps=10)[0, :, 0]
            ax.plot(grid[0, :, 0], y, label=method)
        ax.scatter(support[0][0, :, 0], support[1][0, :, 0], c="k", zorder=3, label="support")
        ax.set_title(f"held-out task {t}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    """Run the recipe; returns the metrics written to ``metrics.json``."""
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    family = sinusoid_family(shots=args.shots, queries=args.shots)
    test_tasks, test_y = family.sample(args.test_tasks, seed=10_000)
    started = time.perf_counter()
    per_seed = {m: {s: [] for s in STEPS} for m in METHODS}
    first = {}
    for seed in range(args.seeds):
        for method in METHODS:
            model = train(method, seed, args, family)
            for steps, mse in evaluate(model, test_tasks, test_y).items():
                per_seed[method][steps].append(mse)
            if seed == 0:
                first[method] = model
    plot(first, test_tasks, os.path.join(args.out, "adapted.png"))
    results = {
        method: {
            str(steps): {
                "mean": float(np.mean(v)), "std": float(np.std(v)), "seeds": v,
            } for steps, v in by_steps.items()
        } for method, by_steps in per_seed.items()
    }  # fmt: skip
    best = {
        str(steps): min(METHODS, key=lambda m: results[m][str(steps)]["mean"]) for steps in STEPS
    }
    for method in METHODS:
        row = "  ".join(
            f"{steps} steps: {results[method][str(steps)]['mean']:.3f} ± "
            f"{results[method][str(steps)]['std']:.3f}"
            for steps in STEPS
        )
        print(f"{method:>10}  {row}")
    for steps in STEPS:
        baseline_wins = best[str(steps)] == "pretrained"
        verdict = "the pretrained baseline wins" if baseline_wins else f"{best[str(steps)]} wins"
        print(f"after {steps} steps: {verdict}")
    metrics = {
        "results": results,
        "best": best,
        "backend": keras.backend.backend(),
        "wall_seconds": time.perf_counter() - started,
        "args": vars(args),
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


if __name__ == "__main__":
    main()

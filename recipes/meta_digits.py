"""Few-shot digits: MAML, ANIL and Reptile against nearest-centroid baselines.

5-way 1-shot and 5-shot classification on held-out digit classes, from
scikit-learn's 8×8 digits (``nnkit.meta.digits_tasks``). The classes are split
by digit: meta-training sees the digits 0-4, each also rotated by 90, 180 and
270 degrees as classes of their own (20 classes); meta-testing draws 5-way
tasks from the digits 5-9, unrotated, never seen in training (with five test
classes every test task has the same classes, relabelled at random, with new
support and query images). Every method is scored on the same held-out tasks
(600 by default, 15 query images per class): query accuracy after adapting
to, or averaging, each task's support images.

- ``maml``: second-order MAML, an MLP 64-64-64-5 (ReLU), inner SGD
  α = ``--inner-learning-rate`` for ``--inner-steps`` steps, Adam outer;
- ``anil``: the same, adapting only the last layer (``head``);
- ``reptile``: Reptile, ``--reptile-steps`` inner steps, ``SGD(1.0)`` outer;
- ``centroid_pixels`` (baseline): nearest class mean of the support images,
  on the raw 64 pixels, Euclidean distance; nothing is trained;
- ``centroid_pretrained`` (baseline): the same body pretrained as an ordinary
  20-class classifier on every meta-training image (Adam, cross-entropy),
  then nearest class mean on its last hidden layer's features.

It repeats everything over several seeds (network initialization, training
tasks, pretraining order) and prints the accuracy mean ± standard deviation
over seeds, then says plainly which method wins at each shot count: on data
this small a simple baseline may well beat meta-learning. It writes ``--out``
(default ``runs/meta_digits``)::

    metrics.json    per shot count and method: mean, std and each seed's accuracy
    accuracy.png    the accuracies with their spread, one group per shot count

``--quick`` runs a tiny version (for the tests). Run with ``--help`` for the
options.
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from nnkit.meta import ANIL, MAML, Reptile, digits_tasks

SHOTS = (1, 5)
WAYS = 5
TRAIN_ROTATIONS = (0, 90, 180, 270)
TRAIN_DIGITS = (0, 1, 2, 3, 4)
TEST_DIGITS = (5, 6, 7, 8, 9)
META = ("maml", "anil", "reptile")
BASELINES = ("centroid_pixels", "centroid_pretrained")
METHODS = META + BASELINES


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--meta-steps", type=int, default=600, help="meta-batches of training")
    parser.add_argument("--tasks-per-batch", type=int, default=16)
    parser.add_argument("--queries", type=int, default=15, help="query images per class")
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--inner-learning-rate", type=float, default=0.4)
    parser.add_argument("--inner-steps", type=int, default=3, help="MAML and ANIL")
    parser.add_argument("--reptile-steps", type=int, default=5)
    parser.add_argument("--outer-learning-rate", type=float, default=1e-3, help="MAML, ANIL")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--out", default="runs/meta_digits")
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        args.meta_steps, args.tasks_per_batch, args.test_tasks, args.seeds = 2, 4, 8, 1
        args.queries, args.pretrain_epochs = 5, 1
    return args


def hidden_layers():
    return [keras.layers.Flatten(), keras.layers.Dense(64, "relu"),
            keras.layers.Dense(64, "relu"), keras.layers.Dense(64, "relu")]  # fmt: skip


def body(seed):
    """The feature extractor of the pretraining baseline: 8×8 image → 64 features."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), *hidden_layers()], name="body")


def network(seed, classes):
    """The meta-learners' network: the same layers with a linear head of ``classes`` logits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((8, 8, 1)), *hidden_layers(), keras.layers.Dense(classes, name="head")]
    )


def learner(method, seed, args):
    net = network(seed, WAYS)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    alpha = args.inner_learning_rate
    if method == "reptile":
        model = Reptile(net, inner_learning_rate=alpha, inner_steps=args.reptile_steps)
        model.compile(keras.optimizers.SGD(1.0), loss=loss)
    else:
        cls = MAML if method == "maml" else ANIL
        extra = {} if method == "maml" else {"head": "head"}
        model = cls(net, inner_learning_rate=alpha, inner_steps=args.inner_steps, **extra)
        model.compile(keras.optimizers.Adam(args.outer_learning_rate), loss=loss)
    return model


def meta_train(method, seed, shots, args):
    sampler = digits_tasks(
        "train",
        shots=shots,
        queries=args.queries,
        rotations=TRAIN_ROTATIONS,
        test_digits=TEST_DIGITS,
    )
    model = learner(method, seed, args)
    model.fit(sampler.batches(args.tasks_per_batch, args.meta_steps, seed=seed), verbose=0)
    return model


def pretrained_features(seed, args):
    """A body pretrained as a 20-class classifier on all meta-training images."""
    from sklearn.datasets import load_digits

    # The images of the meta-training classes, as digits_tasks("train", ...) carves them.
    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    train = np.isin(data.target, TRAIN_DIGITS)
    x = np.concatenate([np.rot90(images[train], k=d // 90, axes=(1, 2)) for d in TRAIN_ROTATIONS])
    y = np.concatenate(
        [data.target[train] + 10 * i for i in range(len(TRAIN_ROTATIONS))]
    )  # one class per digit and rotation, as in digits_tasks
    labels = {label: index for index, label in enumerate(np.unique(y))}
    y = np.array([labels[label] for label in y])
    features = body(seed)
    classifier = keras.Sequential([features, keras.layers.Dense(len(labels))])
    classifier.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    classifier.fit(x, y, batch_size=64, epochs=args.pretrain_epochs, verbose=0)
    return features


def centroid_accuracy(support, y_support, query, y_query):
    """Nearest class mean (Euclidean) per task; inputs ``(tasks, points, features)``."""
    onehot = np.eye(WAYS, dtype="float64")[y_support]  # (tasks, shots·ways, ways)
    centroids = np.einsum("tsc,tsf->tcf", onehot, support) / onehot.sum(1)[..., None]
    distances = ((query[:, :, None, :] - centroids[:, None, :, :]) ** 2).sum(-1)
    return float(np.mean(distances.argmin(-1) == y_query))


def flat(x):
    return x.reshape(*x.shape[:2], -1).astype("float64")


def embed(features, x):
    tasks, points = x.shape[:2]
    out = features.predict(x.reshape(tasks * points, *x.shape[2:]), batch_size=1024, verbose=0)
    return out.reshape(tasks, points, -1).astype("float64")


def score(method, seed, shots, args, tasks, y_query, features):
    if method == "centroid_pixels":
        return centroid_accuracy(
            flat(tasks["x_support"]), tasks["y_support"], flat(tasks["x_query"]), y_query
        )
    if method == "centroid_pretrained":
        return centroid_accuracy(
            embed(features, tasks["x_support"]),
            tasks["y_support"],
            embed(features, tasks["x_query"]),
            y_query,
        )
    model = meta_train(method, seed, shots, args)
    logits = model.predict_adapted(
        tasks["x_support"], tasks["y_support"], tasks["x_query"], batch_size=100
    )
    return float(np.mean(logits.argmax(-1) == y_query))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        means = [results[str(k)][method]["mean"] for k in SHOTS]
        stds = [results[str(k)][method]["std"] for k in SHOTS]
        ax.bar(np.arange(len(SHOTS)) + i * width, means, width, yerr=stds, label=method)
    ax.set_xticks(np.arange(len(SHOTS)) + 0.4 - width / 2, [f"5-way {k}-shot" for k in SHOTS])
    ax.set_ylabel("held-out query accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    """Run the recipe; returns the metrics written to ``metrics.json``."""
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    per_seed = {str(k): {m: [] for m in METHODS} for k in SHOTS}
    for seed in range(args.seeds):
        features = pretrained_features(seed, args)
        for shots in SHOTS:
            test = digits_tasks("test", shots=shots, queries=args.queries, test_digits=TEST_DIGITS)
            tasks, y_query = test.sample(args.test_tasks, seed=10_000 + shots)
            for method in METHODS:
                accuracy = score(method, seed, shots, args, tasks, y_query, features)
                per_seed[str(shots)][method].append(accuracy)
                elapsed = time.perf_counter() - started
                print(
                    f"seed {seed} {shots}-shot {method}: {accuracy:.3f} ({elapsed:.0f} s)",
                    flush=True,
                )
    results = {
        shots: {
            method: {"mean": float(np.mean(v)), "std": float(np.std(v)), "seeds": v}
            for method, v in by_method.items()
        }
        for shots, by_method in per_seed.items()
    }
    best = {shots: max(METHODS, key=lambda m: by[m]["mean"]) for shots, by in results.items()}
    for shots, by_method in results.items():
        print(f"5-way {shots}-shot, held-out digits 5-9, query accuracy (mean ± std over seeds):")
        for method, r in by_method.items():
            print(f"  {method:>20}  {r['mean']:.3f} ± {r['std']:.3f}")
    for shots, winner in best.items():
        best_meta = max(META, key=lambda m: results[shots][m]["mean"])
        best_base = max(BASELINES, key=lambda m: results[shots][m]["mean"])
        gap = results[shots][best_meta]["mean"] - results[shots][best_base]["mean"]
        if winner in BASELINES:
            print(
                f"{shots}-shot: the baseline {winner} wins; the best meta-learner, {best_meta}, "
                f"is {-gap:.3f} behind"
            )
        else:
            print(f"{shots}-shot: {winner} wins, {gap:.3f} ahead of the best baseline, {best_base}")
    metrics = {
        "results": results,
        "best": best,
        "backend": keras.backend.backend(),
        "wall_seconds": time.perf_counter() - started,
        "args": vars(args),
    }
    plot(results, os.path.join(args.out, "accuracy.png"))
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


if __name__ == "__main__":
    main()

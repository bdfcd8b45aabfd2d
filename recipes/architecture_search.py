"""Architecture search on MNIST-1D with ``nnkit.search``: a searcher beside random search.

The recipe searches ``conv1d_space()`` (1–3 Conv1D stages of 8/16/32
channels, kernel 3 or 5, max-pool or stride-2, residual or not, average or
flatten head) by training every proposal (``search_architectures``), once
with quasi-random search and once with ``--searcher`` (regularized evolution
by default) at the same number of trials and epochs. It then

- prints the accuracy–cost Pareto front of all trials (validation accuracy
  against analytic FLOPs, ``count_flops``) and draws it (``pareto.png``);
- retrains each searcher's pick from scratch over ``--seeds`` seeds and
  reports the *test* accuracy, mean ± standard deviation, with its parameter
  count (search-time scores are optimistic: the pick was chosen on them);
- retrains a hand-designed CNN the same way (three stride-2 convolutions of 32
  channels and a flatten head, close to the MNIST-1D paper's CNN) and prints
  the paper's baselines (test accuracy: logistic regression 32 %, MLP 68 %,
  CNN 94 %, GRU 91 %; Greydanus 2020), which used other training settings.

Data: MNIST-1D from the ``mnist1d`` package (``pip install mnist1d``; it is
generated offline), its 4,000 training sequences split 3,000 train / 1,000
validation, its 1,000 test sequences used once per retrained model.

Run ``python recipes/architecture_search.py --help`` for the options;
``--quick`` is a smoke run of a few minutes on 2 CPU cores. The last line
printed is a JSON summary.
"""

import argparse
import json
import pathlib
import time

import keras
import numpy as np

from nnkit.search import conv1d_space, count_flops, pareto_front, search_architectures

PAPER_BASELINES = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91}
HAND_DESIGNED = {
    "stages": 3,
    "stage_0_channels": 32,
    "stage_0_kernel": 5,
    "stage_1_channels": 32,
    "stage_1_kernel": 3,
    "stage_2_channels": 32,
    "stage_2_kernel": 3,
    "downsample": "stride",
    "residual": False,
    "head": "flatten",
}


def mnist1d():
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x, y = data["x"].astype("float32"), data["y"].astype("int32")
    test = (data["x_test"].astype("float32"), data["y_test"].astype("int32"))
    return (x[:3000], y[:3000]), (x[3000:], y[3000:]), test


def retrain(space, arch, data, *, epochs, seeds):
    """Test accuracy of ``arch`` trained from scratch once per seed, and its parameters."""
    (x, y), (x_val, y_val), (x_test, y_test) = data
    accuracies, params = [], 0
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        model = space.build(arch, x.shape[1:], 10)
        model.compile(
            optimizer=keras.optimizers.Adam(3e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
        accuracies.append(float(model.evaluate(x_test, y_test, verbose=0)[1]))
        params = model.count_params()
        keras.backend.clear_session()
    return {
        "test_accuracy_mean": round(float(np.mean(accuracies)), 4),
        "test_accuracy_std": round(float(np.std(accuracies)), 4),
        "seeds": len(accuracies),
        "params": int(params),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searcher", default="evolution")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--retrain-epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/architecture_search")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.epochs, args.retrain_epochs, args.seeds = 3, 2, 2, 1
    out = pathlib.Path(args.out)
    data = mnist1d()
    (x, y), validation, _ = data
    space = conv1d_space()
    results, points = {}, []
    start = time.perf_counter()
    for name in dict.fromkeys(["random", args.searcher]):
        searched = time.perf_counter()
        tuner = search_architectures(
            space,
            x,
            y,
            validation_data=validation,
            directory=out / name,
            searcher=name,
            max_trials=args.trials,
            epochs=args.epochs,
            seed=0,
        )
        search_seconds = time.perf_counter() - searched
        trials = [t for t in tuner.oracle.trials.values() if t.score is not None]
        for trial in trials:
            arch = space.from_values(trial.hyperparameters.values)
            flops = count_flops(space.build(arch, x.shape[1:], 10))
            keras.backend.clear_session()
            points.append((name, arch, float(trial.score), flops))
        best = max(trials, key=lambda t: t.score)
        pick = space.from_values(best.hyperparameters.values)
        results[name] = {
            "pick": pick,
            "search_val_accuracy": round(float(best.score), 4),
            "trials_scored": len(trials),
            "search_seconds": round(search_seconds, 1),
            **retrain(space, pick, data, epochs=args.retrain_epochs, seeds=range(args.seeds)),
        }
        print(name, json.dumps(results[name]), flush=True)
    hand = retrain(space, HAND_DESIGNED, data, epochs=args.retrain_epochs, seeds=range(args.seeds))
    front = pareto_front([p[2] for p in points], [p[3] for p in points])
    front_rows = [
        {"searcher": points[i][0], "val_accuracy": round(points[i][2], 4), "flops": points[i][3]}
        for i in front
    ]
    for row in front_rows:
        print("pareto", json.dumps(row))
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for name in results:
        mine = [p for p in points if p[0] == name]
        axes.scatter([p[3] for p in mine], [p[2] for p in mine], s=12, label=name)
    axes.plot([r["flops"] for r in front_rows], [r["val_accuracy"] for r in front_rows], "k--")
    axes.set_xscale("log")
    axes.set_xlabel("FLOPs per example (analytic)")
    axes.set_ylabel("validation accuracy")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "pareto.png", dpi=120)
    plt.close(figure)
    summary = {
        "trials": args.trials,
        "epochs": args.epochs,
        "retrain_epochs": args.retrain_epochs,
        "searchers": results,
        "hand_designed": hand,
        "paper_baselines": PAPER_BASELINES,
        "pareto_front": front_rows,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

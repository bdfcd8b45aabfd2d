"""Build nnkit's tabular NAS benchmark: every architecture of a small Conv1D space on MNIST-1D.

What it makes: ``bench/data/nas_mnist1d.jsonl``, one JSON line per
architecture of ``conv1d_space(kernels=(5,))`` (312 architectures: 1–3
stages of 8/16/32 channels, max-pool or stride-2 downsampling, residual or
not, global-average or flatten head), each trained with 3 seeds, with the
validation accuracy after every epoch (so a searcher can read any budget of
1…EPOCHS epochs), the parameter count and the seconds per epoch (for
simulated wall time). ``nnkit.search.TabularBenchmark`` reads it.

Method: MNIST-1D from the ``mnist1d`` package (generated offline, its default
arguments, seed 42: 4,000 training and 1,000 test sequences of length 40);
the 4,000 are split 3,000 train / 1,000 validation (the test set is left for
the recipe). Adam 3e-3, batch 64, ``EPOCHS`` epochs, no augmentation. The
three seeds of one architecture are trained as one Keras model of three
independent copies (different initial weights, shared batch order, summed
losses: each copy's gradient is its own, so this is three runs in one
compile; the seconds per epoch are divided by 3).

Resumable and kill-safe: each architecture is appended as one line with a
flush and fsync when its three runs end; a restart skips the architectures
already in the file (a torn last line is ignored and redone).

Usage::

    nice -n 19 python bench/nas_table.py            # the full table (resumes)
    python bench/nas_table.py --limit 2 --epochs 2 --out /tmp/t.jsonl  # smoke test

The last line of stdout is one JSON object (how many architectures are done).
"""

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

from bench._timing import set_threads  # noqa: E402
from nnkit.search import conv1d_space  # noqa: E402
from nnkit.search.benchmark import read_table_lines  # noqa: E402

EPOCHS = 12
SEEDS = (0, 1, 2)
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "data" / "nas_mnist1d.jsonl"


def table_space():
    """The benchmark's space (312 architectures)."""
    return conv1d_space(kernels=(5,))


def mnist1d_split():
    """MNIST-1D's training set split 3,000 / 1,000, and its test set."""
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x = data["x"].astype("float32")
    y = data["y"].astype("int32")
    x_test = data["x_test"].astype("float32")
    y_test = data["y_test"].astype("int32")
    return (x[:3000], y[:3000]), (x[3000:], y[3000:]), (x_test, y_test)


def train_seeds(space, arch, data, *, epochs, seeds=SEEDS, batch_size=64):
    """Train ``len(seeds)`` copies of ``arch`` in one model; per-epoch validation accuracy."""
    (x, y), (x_val, y_val), _ = data
    keras.utils.set_random_seed(seeds[0])
    inputs = keras.Input(x.shape[1:])
    outputs = {}
    for seed in seeds:
        keras.utils.set_random_seed(1000 + seed)
        net = space.build(arch, x.shape[1:], 10)
        outputs[f"s{seed}"] = net(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss={
            name: keras.losses.SparseCategoricalCrossentropy(from_logits=True) for name in outputs
        },
        metrics={name: ["accuracy"] for name in outputs},
    )
    params = net.count_params()
    targets = {name: y for name in outputs}
    start = time.perf_counter()
    history = model.fit(
        x,
        targets,
        validation_data=(x_val, {name: y_val for name in outputs}),
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    curves = [
        [round(float(a), 4) for a in history.history[f"val_s{seed}_accuracy"]] for seed in seeds
    ]
    return {
        "val_accuracy": curves,
        "params": int(params),
        "seconds_per_epoch": round(seconds / epochs / len(seeds), 4),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--limit", type=int, default=0, help="stop after this many new ones")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    space = table_space()
    done = {json.dumps(row["arch"], sort_keys=True) for row in read_table_lines(out)}
    data = mnist1d_split()
    new = 0
    # Rewrite without a torn last line before appending.
    rows = read_table_lines(out)
    if out.exists():
        out.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    started = time.perf_counter()
    for arch in space.architectures():
        if json.dumps(arch, sort_keys=True) in done:
            continue
        if args.limit and new >= args.limit:
            break
        result = train_seeds(space, arch, data, epochs=args.epochs)
        row = {"arch": arch, "epochs": args.epochs, "seeds": list(SEEDS), **result}
        with open(out, "a") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        new += 1
        keras.backend.clear_session()
        print(
            f"{len(done) + new}/{space.size} {arch} "
            f"best={max(max(c) for c in result['val_accuracy']):.3f} "
            f"{result['seconds_per_epoch']:.2f}s/epoch",
            flush=True,
        )
    total = len(read_table_lines(out))
    print(
        json.dumps(
            {
                "architectures_done": total,
                "architectures_total": space.size,
                "new": new,
                "seconds": round(time.perf_counter() - started, 1),
                "out": str(out),
            }
        )
    )


if __name__ == "__main__":
    main()

"""One process of a distributed ASHA architecture search (chief or worker, from KERASTUNER_*).

Run by ``tests/search/test_distributed_search.py`` as the chief and two
workers (``tests/tuning/_distributed.py``); every process runs this same
``search_architectures`` call. The chief, which holds the oracle, writes the
architecture it reports as the best to ``DIR/best.json``. A second argument
``median`` adds ``nnkit.tuning.MedianStopping``.
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

MAX_TRIALS = 8
EPOCHS = 3  # ASHA's rungs: 1 and 3 epochs (eta = 3)


def space():
    """40 one-stage MLPs (widths 2 to 16, two activations, plain or residual)."""
    from nnkit.search import residual_mlp_space

    return residual_mlp_space(
        stages=(1,),
        depths=(1,),
        widths=(2, 4, 8, 16),
        activations=("relu", "gelu"),
        normalizations=("none",),
        dropouts=(0.0,),
    )


def data():
    """128 training and 128 validation examples of a 2-class problem (a seeded draw)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = (x[:, 0] * x[:, 1] + 0.5 * x[:, 2] > 0).astype("int32")
    return (x[:128], y[:128]), (x[128:], y[128:])


def main(directory, median=False):
    from nnkit.search import search_architectures
    from nnkit.tuning import MedianStopping

    (x, y), validation = data()
    callbacks = (
        [MedianStopping("val_accuracy", min_trials=2, warmup_epochs=0, mode="max")]
        if median
        else None
    )
    tuner = search_architectures(
        space(),
        x,
        y,
        validation_data=validation,
        directory=directory,
        searcher="asha",
        max_trials=MAX_TRIALS,
        epochs=EPOCHS,
        seed=0,
        callbacks=callbacks,
    )
    role = os.environ.get("KERASTUNER_TUNER_ID", "")
    if role == "chief":
        best = tuner.oracle.get_best_trials(1)[0]
        record = {"trial_id": best.trial_id, "score": best.score}
        (pathlib.Path(directory) / "best.json").write_text(json.dumps(record))
    print(f"{role} done: {tuner.study_dir}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], median=sys.argv[2:] == ["median"])

"""One process of a distributed sweep (chief or worker, from the KERASTUNER_* variables).

Run by ``tests/tuning/test_distributed.py`` as the chief and two workers; every
process runs this same script, as docs/tuning.md says to.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from nnkit.tuning import SearchSpace, tune  # noqa: E402

MAX_TRIALS = 4


def main(directory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    space = SearchSpace().fixed(depth=1, width=8).drop("normalization", "residual")
    tuner = tune(
        space,
        x,
        y,
        validation_data=(x, y),
        directory=directory,
        max_trials=MAX_TRIALS,
        epochs=2,
        seed=0,
    )
    role = os.environ.get("KERASTUNER_TUNER_ID", "")
    print(f"{role} done: {tuner.study_dir}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

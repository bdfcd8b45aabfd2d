"""Random-search studies of a known function, written in the study-directory format.

Used by the tests of the sensitivity report (the objective, and so the true
importance ranking, is chosen by the test) and by its docstring example.
"""

import math

import numpy as np

from nnkit.tuning._study import study_header, write_study


def sample_configuration(specs, rng):
    """One random-search draw from the specs: uniform in each knob's sampling space.

    Parents are drawn before their children (``specs`` is in definition order,
    as keras-tuner keeps it); a conditional knob is left out when inactive.
    """
    values = {}
    for spec in specs:
        active = all(values.get(c["parent"]) in c["values"] for c in spec["conditions"])
        if not active:
            continue
        kind = spec["type"]
        if kind in ("float", "int"):
            low, high = spec["min"], spec["max"]
            if spec["sampling"] == "log":
                value = math.exp(rng.uniform(math.log(low), math.log(high)))
            elif spec["sampling"] == "reverse_log":
                value = high + low - math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                value = rng.uniform(low, high)
            value = min(max(value, low), high)
            values[spec["name"]] = int(round(value)) if kind == "int" else float(value)
        elif kind in ("choice", "boolean"):
            options = spec["values"]
            values[spec["name"]] = options[int(rng.integers(len(options)))]
        else:
            values[spec["name"]] = spec["default"]
    return values


def write_random_study(directory, specs, objective, *, n_trials, seed, tuner="random"):
    """Write a study of ``n_trials`` random draws scored by ``objective(values, rng)``.

    ``objective`` returns a float (NaN or inf for a diverged trial, recorded as
    failed). Returns the study header.
    """
    rng = np.random.default_rng(seed)
    header = study_header(
        specs, objective="val_loss", tuner=tuner, seed=seed, created="2024-01-01T00:00:00+00:00"
    )
    trials = []
    for i in range(n_trials):
        values = sample_configuration(header["hyperparameters"], rng)
        value = float(objective(values, rng))
        finite = math.isfinite(value)
        trials.append(
            {
                "trial_id": f"{i:03d}",
                "status": "completed" if finite else "failed",
                "message": "" if finite else "The objective became NaN.",
                "hyperparameters": values,
                "executions": [
                    {
                        "seed": i,
                        "best_epoch": 0,
                        "best": {"val_loss": value if finite else None},
                        "wall_seconds": 1.0,
                    }
                ],
                "objective": value if finite else None,
                "wall_seconds": 1.0,
            }
        )
    write_study(directory, header, trials)
    return header

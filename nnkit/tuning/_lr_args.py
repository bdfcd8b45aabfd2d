"""What ``lr_find`` does with its arguments: its default number of steps, the batches it
draws, and the deprecated keywords (``min_learning_rate``/``max_learning_rate``, now
``learning_rates=(first, last)``; ``smoothing``)."""

import math
import warnings

import keras
import numpy as np

# 100 rates (fastai's and Lightning's default), whatever the data's size. Half an epoch
# (the former default) of a 1,400-example set at batch 64 is 11 steps, 8 decades in 11
# points, and every rule's suggestion came out decades off (bench/lr_sensitivity.py).
DEFAULT_STEPS = 100


def sweep_data(x, y, batch_size, steps, seed):
    """The ``steps`` batches of the sweep, drawn with a private generator (no global RNG)."""
    if hasattr(x, "repeat") and hasattr(x, "take") and y is None:  # a tf.data.Dataset
        return x.repeat(), None
    rows = len(keras.tree.flatten(x)[0])
    need = steps * batch_size
    rng = np.random.default_rng(seed)
    index = np.concatenate([rng.permutation(rows) for _ in range(-(-need // rows))])[:need]

    def take(array):
        return np.asarray(array)[index]

    return keras.tree.map_structure(take, x), None if y is None else keras.tree.map_structure(
        take, y
    )


def deprecated_options(learning_rates, deprecated):
    """``(first, last), smoothing`` from ``learning_rates`` and the deprecated keywords."""
    default = (1e-7, 10.0)
    if not isinstance(learning_rates, (tuple, list)) or len(learning_rates) != 2:
        raise TypeError(
            "`learning_rates` must be a (first, last) pair of rates, e.g. (1e-7, 10.0). "
            f"Received: learning_rates={learning_rates!r}"
        )
    first, last = learning_rates
    old = [name for name in ("min_learning_rate", "max_learning_rate") if name in deprecated]
    if old:
        if tuple(learning_rates) != default:
            raise ValueError(
                f"`{old[0]}` is a deprecated part of `learning_rates`: pass only "
                f"`learning_rates=(first, last)`. Received: {old[0]}="
                f"{deprecated[old[0]]!r}, learning_rates={learning_rates!r}"
            )
        first = deprecated.pop("min_learning_rate", first)
        last = deprecated.pop("max_learning_rate", last)
        warnings.warn(
            f"lr_find: {' and '.join(f'`{n}`' for n in old)} are deprecated and will be "
            "removed in the next release; use `learning_rates=(first, last)` (see "
            f"docs/naming.md). Received: learning_rates=({first!r}, {last!r})",
            DeprecationWarning,
            stacklevel=3,
        )
    smoothing = 0.9
    if "smoothing" in deprecated:
        smoothing = deprecated.pop("smoothing")
        warnings.warn(
            "lr_find: `smoothing` is deprecated and will be removed in the next release; the "
            "test smooths with β = 0.9 (set `smoothing` on a LearningRateRangeTest callback "
            f"for another). Received: smoothing={smoothing!r}",
            DeprecationWarning,
            stacklevel=3,
        )
    if deprecated:
        name = next(iter(deprecated))
        raise TypeError(f"lr_find() got an unexpected keyword argument {name!r}")
    for value in (first, last):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                "`learning_rates` must be a (first, last) pair of numbers. "
                f"Received: learning_rates=({first!r}, {last!r})"
            )
    if not (0 < first < last and math.isfinite(last)):
        raise ValueError(
            "`learning_rates` must be (first, last) with 0 < first < last, both finite. "
            f"Received: learning_rates=({first!r}, {last!r})"
        )
    return (float(first), float(last)), smoothing

"""Measured inference latency: the median of timed ``predict_on_batch`` calls on a fixed batch.

Latency is a measurement of this machine, not a property of the
architecture: it depends on the backend, the threads, and what else runs.
The median of ``repeats`` calls after ``warmup`` untimed ones (which trace
and compile the predict function) resists the odd slow call; the
interquartile range is its spread. Weights do not matter, so an untrained
model is measured before it is trained.
"""

import time

import keras
import numpy as np

from nnkit import _validation as v


def measure_latency(model, *, batch_size=32, repeats=20, warmup=3, clock=None):
    """Median wall time of ``model.predict_on_batch`` on a fixed batch, in milliseconds.

    Use it to compare architectures' inference cost on the machine that will
    serve them, or to constrain a search (``max_latency_ms=``).

    Formula: ``t_i = clock() after − clock() before`` for the ``i``-th of
    ``repeats`` calls after ``warmup`` untimed ones; ``median_ms =
    1000·median(t)``, ``iqr_ms = 1000·(q75(t) − q25(t))``.

    Args:
        model: A built Keras model with one input. Required.
        batch_size: Examples in the fixed batch (seeded normal values).
            Defaults to ``32``.
        repeats: Timed calls, an int ``>= 1``. Defaults to ``20``.
        warmup: Untimed calls first, an int ``>= 0``. Defaults to ``3``.
        clock: A function returning seconds (injected by tests). Defaults
            to ``None`` (``time.perf_counter``).

    Returns:
        A dict: ``median_ms``, ``iqr_ms``, ``min_ms``, ``repeats`` and
        ``batch_size``.

    Raises:
        TypeError: If ``model`` is not a Keras model or ``clock`` is not callable.
        ValueError: If a count is out of range.

    Example:
    >>> import keras
    >>> from nnkit.search import measure_latency
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> timing = measure_latency(model, batch_size=4, repeats=5, warmup=1)
    >>> timing["median_ms"] > 0, timing["repeats"]
    (True, 5)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    batch_size = v.check_positive_int("batch_size", batch_size)
    repeats = v.check_positive_int("repeats", repeats)
    warmup = v.check_non_negative_int("warmup", warmup)
    if clock is None:
        clock = time.perf_counter
    elif not callable(clock):
        raise TypeError(f"`clock` must be callable or None. Received: clock={clock!r}")
    shape = model.input_shape
    if isinstance(shape, list) or None in shape[1:]:
        raise ValueError(
            "`model` must have one input of known shape (apart from the batch). "
            f"Received: a model with input_shape={shape!r}"
        )
    batch = np.random.default_rng(0).normal(size=(batch_size, *shape[1:])).astype("float32")
    for _ in range(warmup):
        model.predict_on_batch(batch)
    times = []
    for _ in range(repeats):
        start = clock()
        model.predict_on_batch(batch)
        times.append(clock() - start)
    times = 1000.0 * np.asarray(times, dtype="float64")
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return {
        "median_ms": float(median),
        "iqr_ms": float(q75 - q25),
        "min_ms": float(times.min()),
        "repeats": repeats,
        "batch_size": batch_size,
    }

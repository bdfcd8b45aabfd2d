"""The data-parallel conventions: global batch, learning-rate scaling, input pipelines.

Keras's ``fit(batch_size=...)`` is the **global** batch: under a strategy with
``N`` replicas each replica gets ``batch_size / N`` examples per step, and the
gradients are summed over replicas (Keras scales the loss by ``1 / N``), so
one step sees the gradient of the global batch. These helpers make that
convention explicit. TensorFlow is imported only inside the functions that
need it.
"""

import math

import keras

from nnkit import _validation as v
from nnkit._arrays import to_numpy
from nnkit.distribute.selection import _check_supported, _is_keras_distribution
from nnkit.schedules import Constant, Scaled, Warmup

#: Values of the ``rule`` argument of ``scale_learning_rate``.
RULES = ("linear", "sqrt")
#: Values of the ``auto_shard_policy`` argument of ``input_pipeline``.
SHARD_POLICIES = ("auto", "data", "file", "off")


def _tf():
    import tensorflow as tf

    return tf


def _distribution_replicas(distribution):
    mesh = distribution.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])


def _num_replicas(strategy):
    """Replicas that share a global batch under ``strategy`` (``None``: the current one)."""
    if strategy is None:
        if keras.backend.backend() == "tensorflow":
            return int(_tf().distribute.get_strategy().num_replicas_in_sync)
        distribution = keras.distribution.distribution()
        return 1 if distribution is None else _distribution_replicas(distribution)
    _check_supported("strategy", strategy)
    if _is_keras_distribution(strategy) and not isinstance(strategy, type):
        return _distribution_replicas(strategy)
    replicas = getattr(strategy, "num_replicas_in_sync", None)
    if isinstance(strategy, type) or not isinstance(replicas, int):
        raise TypeError(
            "`strategy` must be a tf.distribute.Strategy (or, on the JAX backend, a "
            f"keras.distribution.Distribution) or None. Received: strategy={strategy!r}"
        )
    return replicas


def _num_workers(strategy):
    """Worker processes of a multi-worker strategy (1 for every other strategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, sum(len(cluster.get(task, ())) for task in ("chief", "worker")))


def global_batch_size(per_replica_batch, strategy=None):
    """The global batch for a per-replica batch: ``per_replica_batch · replicas``.

    Keras's ``fit(batch_size=...)`` and the batch of a ``tf.data`` pipeline
    given to ``fit`` are the global batch; each of the ``N`` replicas of the
    strategy gets ``global / N`` examples per step. Use this when a model was
    tuned with a per-device batch and should keep it on ``N`` devices.

    Args:
        per_replica_batch: Examples per replica per step, an int ``>= 1``.
            Required.
        strategy: A ``tf.distribute.Strategy`` (or, on the JAX backend, a
            ``keras.distribution.Distribution``, whose batch axis counts the
            replicas); ``None`` uses the current one (the strategy in scope,
            or the distribution set globally on the JAX backend). Defaults to
            ``None``.

    Returns:
        The global batch size, an int.

    Raises:
        TypeError: If ``per_replica_batch`` is not an int or ``strategy`` is
            not a strategy.
        ValueError: If ``per_replica_batch < 1``, or ``strategy`` is a
            ``ParameterServerStrategy`` or (on TensorFlow) a
            ``keras.distribution.Distribution``.

    Example:
    >>> from nnkit.distribute import global_batch_size
    >>> global_batch_size(32)  # the default strategy has one replica
    32
    """
    per_replica_batch = v.check_positive_int("per_replica_batch", per_replica_batch)
    return per_replica_batch * _num_replicas(strategy)


def per_replica_batch_size(global_batch, strategy=None):
    """The examples each replica gets per step from a global batch: ``global / replicas``.

    The inverse of ``global_batch_size``. The global batch must split evenly:
    an uneven split would give replicas different batch sizes, and with a
    mean loss a different weight per example than on one device.

    Args:
        global_batch: The global batch size (``fit``'s ``batch_size``), an int
            ``>= 1``. Required.
        strategy: As for ``global_batch_size``. Defaults to ``None``.

    Returns:
        The per-replica batch size, an int.

    Raises:
        TypeError: If ``global_batch`` is not an int or ``strategy`` is not a
            strategy.
        ValueError: If ``global_batch < 1``, if it is not divisible by the
            number of replicas (the message gives both), or ``strategy`` is
            unsupported (as for ``global_batch_size``).

    Example:
    >>> from nnkit.distribute import per_replica_batch_size
    >>> per_replica_batch_size(256)
    256
    """
    global_batch = v.check_positive_int("global_batch", global_batch)
    replicas = _num_replicas(strategy)
    if global_batch % replicas:
        raise ValueError(
            f"`global_batch` must be divisible by the number of replicas ({replicas}) so "
            f"that every replica gets the same batch. Received: global_batch={global_batch} "
            f"with {replicas} replicas; use a multiple of {replicas}, e.g. "
            f"{(global_batch // replicas + 1) * replicas}"
        )
    return global_batch // replicas


def scale_learning_rate(
    base_lr, base_batch_size, global_batch_size, *, rule="linear", warmup_steps=0
):
    """The learning rate for a new global batch, as an nnkit schedule, with gradual warmup.

    Use it when the global batch grows (more replicas, same per-replica
    batch) and the rate tuned at ``base_batch_size`` must follow. With
    ``k = global_batch_size / base_batch_size``, the linear rule multiplies
    the rate by ``k`` (Goyal et al. 2017, for SGD); the square-root rule by
    ``√k`` (often a better fit for Adam-type optimizers). Large ``k`` makes
    early steps unstable, so ``warmup_steps > 0`` ramps the rate linearly
    from the base rate up to the scaled one, as in Goyal et al.'s gradual
    warmup; the scaled schedule's clock starts when warmup ends, as with
    ``nnkit.schedules.Warmup``, so the run is ``warmup_steps`` plus the
    schedule's own length.

    Formula, with ``s`` the base schedule (``s(t) = base_lr`` for a number),
    ``f = k`` (linear) or ``√k`` (sqrt) and ``w = warmup_steps``::

        η(t) = s(0) + (f·s(0) − s(0)) · t / w     for t < w
        η(t) = f · s(t − w)                       for t ≥ w

    A number gives ``Constant(f·base_lr)`` (inside a ``Warmup`` when ``w >
    0``); a schedule gives ``Scaled(schedule, f)``, whose factor is a
    variable: call it inside ``strategy.scope()``, where the optimizer is
    built.

    Args:
        base_lr: The learning rate tuned at ``base_batch_size``: a number
            ``> 0`` or a ``keras.optimizers.schedules.LearningRateSchedule``
            (nnkit's or Keras's). Required.
        base_batch_size: The global batch ``base_lr`` was tuned for, an int
            ``>= 1``. Required.
        global_batch_size: The global batch now (``fit``'s ``batch_size``),
            an int ``>= 1``. Required.
        rule: ``"linear"`` (``f = k``) or ``"sqrt"`` (``f = √k``). Defaults
            to ``"linear"``.
        warmup_steps: Steps of linear warmup from ``s(0)`` to ``f·s(0)``, an
            int ``>= 0``. Defaults to ``0``.

    Returns:
        An nnkit schedule: ``Constant``, ``Scaled``, or ``Warmup`` around
        either.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``base_lr`` is not a finite number ``> 0``, a batch
            size is ``< 1``, ``rule`` is unknown or ``warmup_steps < 0``.

    Example:
    >>> from nnkit.distribute import scale_learning_rate
    >>> lr = scale_learning_rate(0.1, 256, 1024, warmup_steps=100)
    >>> [round(float(lr(t)), 4) for t in (0, 50, 100, 5000)]
    [0.1, 0.25, 0.4, 0.4]
    >>> round(float(scale_learning_rate(0.1, 256, 1024, rule="sqrt")(0)), 4)
    0.2

    References:
        Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in
        1 Hour", 2017 (linear scaling, gradual warmup). Krizhevsky, "One
        weird trick for parallelizing convolutional neural networks", 2014
        (square-root scaling).
    """
    base_batch_size = v.check_positive_int("base_batch_size", base_batch_size)
    global_batch_size = v.check_positive_int("global_batch_size", global_batch_size)
    rule = v.check_one_of("rule", rule, RULES)
    warmup_steps = v.check_non_negative_int("warmup_steps", warmup_steps)
    k = global_batch_size / base_batch_size
    factor = k if rule == "linear" else math.sqrt(k)
    if isinstance(base_lr, keras.optimizers.schedules.LearningRateSchedule):
        scaled = Scaled(base_lr, scale=factor)
        start = float(to_numpy(base_lr(0)))
    else:
        number = v.plain_number(base_lr)  # np.float32(0.5) is a number too
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise TypeError(
                "`base_lr` must be a number or a keras.optimizers.schedules."
                f"LearningRateSchedule. Received: base_lr={base_lr!r}"
            )
        start = v.check_positive_number("base_lr", base_lr)
        scaled = Constant(factor * start)
    if warmup_steps == 0:
        return scaled
    return Warmup(scaled, warmup_steps, initial_learning_rate=start)


def _check_shuffle(shuffle):
    if isinstance(shuffle, bool):
        return shuffle
    shuffle = v.check_positive_int("shuffle", shuffle)
    if shuffle == 1:
        raise ValueError(
            "`shuffle` must be True, False or a buffer size >= 2 (a buffer of 1 keeps the "
            "order, which is shuffle=False; write True for a buffer the size of the data). "
            f"Received: shuffle={shuffle!r}"
        )
    return shuffle


def _check_prefetch(prefetch):
    if prefetch == "auto" or (isinstance(prefetch, int) and prefetch == -1):
        return -1  # tf.data.AUTOTUNE
    if isinstance(prefetch, str):
        v.check_one_of("prefetch", prefetch, ("auto",))
    return v.check_non_negative_int("prefetch", prefetch)


def _check_cache(cache):
    if isinstance(cache, bool):
        return cache
    if isinstance(cache, str):
        return v.check_str("cache", cache)
    raise TypeError(f"`cache` must be True, False or a file path. Received: cache={cache!r}")


def _pipeline_plan(
    *, in_memory, replicas, workers, shuffle, seed, drop_remainder, auto_shard_policy
):
    """Resolve ``input_pipeline``'s defaults: ``(drop_remainder, shard policy name)``.

    Pure, so the multi-worker rules are tested without a cluster.
    """
    if drop_remainder is None:
        # Equal per-replica batches on every step (and static shapes on TPU).
        drop_remainder = replicas > 1
    policy = auto_shard_policy.upper()
    if auto_shard_policy == "auto":
        # In-memory arrays have no files to split: shard by element. A dataset
        # is left to TensorFlow (AUTO tries files, then falls back to elements).
        policy = "DATA" if in_memory else "AUTO"
    if in_memory and policy == "FILE":
        raise ValueError(
            "auto_shard_policy='file' needs a dataset read from several files; `x` holds "
            "in-memory arrays. Use 'data' (or 'auto'). Received: auto_shard_policy='file'"
        )
    if workers > 1 and shuffle and seed is None and policy in ("DATA", "AUTO"):
        raise ValueError(
            f"Under a multi-worker strategy ({workers} workers) sharding by element needs "
            "every worker to produce the same order, so a shuffled pipeline needs a `seed` "
            "(the same on every worker). Pass seed=<int>, shuffle=False, or "
            "auto_shard_policy='file' for a dataset read from files. Received: seed=None"
        )
    return drop_remainder, policy


def _sample_count(name, tree):
    tf = _tf()
    counts = {}
    for i, leaf in enumerate(tf.nest.flatten(tree)):
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) == 0:
            raise ValueError(
                f"`{name}` must hold arrays with a leading sample axis. "
                f"Received: {name} leaf {i} of type {type(leaf).__name__}"
            )
        counts[i] = int(shape[0])
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"Every array in `{name}` must have the same number of samples. "
            f"Received: leading sizes {sorted(set(counts.values()))}"
        )
    return next(iter(counts.values()))


def input_pipeline(
    x,
    y=None,
    *,
    global_batch_size,
    shuffle=True,
    seed=None,
    drop_remainder=None,
    prefetch="auto",
    auto_shard_policy="auto",
    cache=False,
    strategy=None,
):
    """A batched ``tf.data`` pipeline for ``fit`` under a strategy, with sensible defaults.

    Use it instead of passing arrays to ``fit`` when training on several
    replicas or workers: it batches by the **global** batch (what ``fit``
    expects; the strategy splits each batch across the replicas), drops the
    last partial batch under a multi-replica strategy so every replica gets
    the same batch, prefetches, and sets the auto-sharding policy that a
    multi-worker strategy applies: ``DATA`` (by element) for in-memory
    arrays, TensorFlow's ``AUTO`` (by file, falling back to element) for a
    dataset. Sharding by element needs every worker to produce the same
    order, so a shuffled pipeline under several workers needs a ``seed``.
    The stages are: slices, ``cache``, ``shuffle`` (reshuffled each epoch),
    ``batch``, ``prefetch``. Call ``fit(dataset, shuffle=False)`` without a
    ``batch_size``: the pipeline shuffles and batches, and Keras 3.15 warns
    that ``fit``'s default ``shuffle=True`` is ignored for a dataset.

    Args:
        x: Inputs: an array, a tuple/list/dict of arrays, or an unbatched
            ``tf.data.Dataset`` (one example per element, with the targets
            inside, and ``y=None``). Required.
        y: Targets: arrays with as many samples as ``x``, or ``None``.
            Defaults to ``None``.
        global_batch_size: The global batch, an int ``>= 1`` divisible by
            the number of replicas. Required.
        shuffle: ``True`` (a buffer the size of the data), ``False``, or a
            buffer size ``>= 2``; a dataset of unknown size needs a size.
            Defaults to ``True``.
        seed: Shuffle seed (an int), or ``None``. Defaults to ``None``.
        drop_remainder: Drop the last partial batch; ``None`` means ``True``
            under a strategy with several replicas, else ``False``. Defaults
            to ``None``.
        prefetch: ``"auto"`` (``tf.data.AUTOTUNE``, also accepted as ``-1``)
            or a buffer of that many batches (``0``: no prefetch). Defaults
            to ``"auto"``.
        auto_shard_policy: ``"auto"`` (see above), ``"data"``, ``"file"`` or
            ``"off"``: the ``tf.data.Options().experimental_distribute``
            policy a multi-worker strategy applies. Defaults to ``"auto"``.
        cache: ``True`` caches in memory after the first epoch, a path caches
            to files there, ``False`` does not cache. Defaults to ``False``.
        strategy: The strategy it will be used under (replicas and workers
            are read from it); ``None`` uses the current one. Defaults to
            ``None``.

    Returns:
        A ``tf.data.Dataset`` of global batches, with its options set.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``global_batch_size`` is not divisible by the number
            of replicas, ``x`` and ``y`` differ in length, ``y`` is given with
            a dataset, ``auto_shard_policy`` is unknown or ``"file"`` for
            arrays, the size of a dataset to shuffle is unknown, or a shuffled
            multi-worker pipeline sharded by element has no ``seed``.

    Example:
    >>> import numpy as np
    >>> from nnkit.distribute import input_pipeline
    >>> x, y = np.zeros((10, 3), "float32"), np.zeros((10,), "float32")
    >>> ds = input_pipeline(x, y, global_batch_size=4, seed=0)
    >>> [int(xb.shape[0]) for xb, yb in ds]
    [4, 4, 2]
    >>> ds.options().experimental_distribute.auto_shard_policy.name
    'DATA'
    """
    tf = _tf()
    global_batch_size = v.check_positive_int("global_batch_size", global_batch_size)
    per_replica_batch_size(global_batch_size, strategy)  # checks the split
    shuffle = _check_shuffle(shuffle)
    seed = v.check_optional_int("seed", seed, limit=v.SEED_LIMIT)
    if drop_remainder is not None:
        v.check_bool("drop_remainder", drop_remainder)
    prefetch = _check_prefetch(prefetch)
    auto_shard_policy = v.check_one_of("auto_shard_policy", auto_shard_policy, SHARD_POLICIES)
    cache = _check_cache(cache)

    v.check_data("x", x)
    v.check_data("y", y, allow_none=True)
    in_memory = not isinstance(x, tf.data.Dataset)
    if in_memory:
        # tf.data reads a list as one tensor to stack; Keras reads it as several inputs.
        x = tuple(x) if isinstance(x, list) else x
        y = tuple(y) if isinstance(y, list) else y
        count = _sample_count("x", x)
        if y is not None and _sample_count("y", y) != count:
            raise ValueError(
                "`x` and `y` must have the same number of samples. "
                f"Received: {count} in x, {_sample_count('y', y)} in y"
            )
        dataset = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    else:
        if y is not None:
            raise ValueError(
                "`y` must be None when `x` is a tf.data.Dataset (put the targets in its "
                f"elements). Received: y of type {type(y).__name__}"
            )
        dataset = x
        count = int(dataset.cardinality())

    drop_remainder, policy = _pipeline_plan(
        in_memory=in_memory,
        replicas=_num_replicas(strategy),
        workers=_num_workers(strategy if strategy is not None else tf.distribute.get_strategy()),
        shuffle=bool(shuffle),
        seed=seed,
        drop_remainder=drop_remainder,
        auto_shard_policy=auto_shard_policy,
    )
    if cache is not False:
        dataset = dataset.cache() if cache is True else dataset.cache(cache)
    if shuffle is not False:
        if shuffle is True and count < 0:
            raise ValueError(
                "shuffle=True needs the dataset's size for the shuffle buffer, which is "
                "unknown here; pass a buffer size, e.g. shuffle=10000. "
                f"Received: shuffle=True, dataset cardinality={count}"
            )
        buffer = count if shuffle is True else shuffle
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(global_batch_size, drop_remainder=drop_remainder)
    if prefetch != 0:
        dataset = dataset.prefetch(prefetch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = getattr(
        tf.data.experimental.AutoShardPolicy, policy
    )
    return dataset.with_options(options)

"""Choosing a ``tf.distribute`` strategy for the hardware and the environment.

The decision (``choose_strategy``) is a pure function of facts about the
environment, so it is tested by injecting them; ``strategy`` gathers the facts
from the running process and builds the strategy. TensorFlow is imported only
inside the functions that need it, so ``import nnkit.distribute`` works on a
JAX-only machine.
"""

import json
import logging
import os

import keras

from nnkit import _validation as v
from nnkit._backend import require_backend
from nnkit._messages import say
from nnkit.distribute.multi_worker import fix_multi_worker_fit

logger = logging.getLogger("nnkit.distribute")

#: Values of ``kind`` accepted by ``strategy`` and ``choose_strategy``.
KINDS = ("auto", "tpu", "multiworker", "mirrored", "default", "one_device")

# Names users reach for that nnkit refuses with a message naming the alternative.
_PARAMETER_SERVER_KINDS = ("parameter_server", "parameterserver", "ps")
_PARAMETER_SERVER_CLASSES = {
    "ParameterServerStrategy",
    "ParameterServerStrategyV1",
    "ParameterServerStrategyV2",
}
_JAX_ONLY_KINDS = ("data_parallel", "data_parallel_jax", "model_parallel", "model_parallel_jax")

# Environment variables through which TensorFlow's TPU resolver finds a Cloud TPU.
_TPU_ENV = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG")

_WORKER_TASKS = ("chief", "worker")


def _parameter_server_error(name, value):
    return ValueError(
        "ParameterServerStrategy is not supported: Keras 3 `Model.fit` cannot train under it "
        "(it needs the Keras 2 ClusterCoordinator loop). Use MultiWorkerMirroredStrategy "
        "(kind='multiworker'): synchronous data parallelism over every worker, configured "
        f"by the same TF_CONFIG without its 'ps' tasks. Received: {name}={value!r}"
    )


def _jax_only_error(name, value):
    if keras.backend.backend() == "jax":
        hint = (
            "On the JAX backend use it directly: "
            "keras.distribution.set_distribution(keras.distribution.DataParallel()) "
            "(or ModelParallel with a LayoutMap); tf.distribute strategies do not apply."
        )
    else:
        hint = (
            "On the TensorFlow backend Keras silently ignores it. Set KERAS_BACKEND=jax "
            "before importing keras to use it, or use a tf.distribute strategy "
            "(kind='mirrored', 'multiworker' or 'tpu')."
        )
    return ValueError(
        "keras.distribution (DataParallel, ModelParallel) works only on the JAX backend. "
        f"{hint} Received: {name}={value!r}"
    )


def _check_supported(name, value):
    """Raise for distribution objects nnkit refuses; return ``value`` otherwise.

    A ``ParameterServerStrategy`` (class or instance) raises an error naming
    ``MultiWorkerMirroredStrategy``; a ``keras.distribution.Distribution``
    raises on the TensorFlow backend (it is JAX-backend only).
    """
    cls = value if isinstance(value, type) else type(value)
    if {c.__name__ for c in cls.__mro__} & _PARAMETER_SERVER_CLASSES:
        raise _parameter_server_error(name, value)
    if _is_keras_distribution(value) and keras.backend.backend() != "jax":
        raise _jax_only_error(name, value)
    return value


def _is_keras_distribution(value):
    """Whether ``value`` is a ``keras.distribution`` Distribution (class or instance).

    Keras does not export the ``Distribution`` base class, so it is found by
    name in the MRO.
    """
    cls = value if isinstance(value, type) else type(value)
    return any(
        c.__name__ == "Distribution" and c.__module__.startswith("keras.") for c in cls.__mro__
    )


def _check_kind(kind):
    if isinstance(kind, str):
        key = kind.lower()
        if key in _PARAMETER_SERVER_KINDS:
            raise _parameter_server_error("kind", kind)
        if key in _JAX_ONLY_KINDS:
            raise _jax_only_error("kind", kind)
    _check_supported("kind", kind)
    return v.check_one_of("kind", kind, KINDS)


def _parse_tf_config(tf_config, name="TF_CONFIG"):
    """``TF_CONFIG`` (a JSON string, a dict or ``None``) as a checked dict, or ``None``.

    ``None`` and ``""`` mean "not set". A cluster with ``ps`` tasks raises the
    parameter-server error; a cluster with tasks but no valid ``task`` entry
    raises a ``ValueError`` that echoes the value.
    """
    if tf_config is None or tf_config == "":
        return None
    if isinstance(tf_config, str):
        try:
            config = json.loads(tf_config)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"`{name}` is not valid JSON ({error}). Expected e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                f'"task": {{"type": "worker", "index": 0}}}}. Received: {name}={tf_config!r}'
            ) from None
    else:
        config = tf_config
    if not isinstance(config, dict):
        error = ValueError if isinstance(tf_config, str) else TypeError
        raise error(
            f"`{name}` must be a JSON object (a dict or its JSON text) with 'cluster' and "
            f"'task' keys. Received: {name}={tf_config!r}"
        )
    cluster = config.get("cluster", {})
    if not isinstance(cluster, dict) or not all(
        isinstance(tasks, (list, dict)) for tasks in cluster.values()
    ):
        raise ValueError(
            f"`{name}['cluster']` must map task types ('chief', 'worker') to lists of "
            f"'host:port' addresses. Received: {name}={tf_config!r}"
        )
    if cluster.get("ps"):
        raise _parameter_server_error(name, tf_config)
    if any(cluster.values()):
        task = config.get("task")
        valid = (
            isinstance(task, dict)
            and task.get("type") in cluster
            and isinstance(task.get("index"), int)
            and not isinstance(task.get("index"), bool)
            and 0 <= task["index"] < len(cluster[task["type"]])
        )
        if not valid:
            raise ValueError(
                f"`{name}['task']` must say which task of the cluster this process is: "
                '{"type": <a task type of the cluster>, "index": <0 .. number of such tasks '
                f"- 1>}}. Received: {name}={tf_config!r}"
            )
    return config


def _num_workers(config):
    if config is None:
        return 0
    cluster = config.get("cluster", {})
    return sum(len(cluster.get(task, ())) for task in _WORKER_TASKS)


def _check_devices(devices):
    if devices is None:
        return None
    devices = v.check_sequence(
        "devices", devices, "a list of device names such as ['GPU:0', 'GPU:1']"
    )
    for i, device in enumerate(devices):
        v.check_str(f"devices[{i}]", device)
    return devices


def _describe(devices):
    if not devices:
        return "no GPU"
    count = "one local device" if len(devices) == 1 else f"{len(devices)} local devices"
    return f"{count} ({', '.join(devices)})"


def choose_strategy(kind="auto", *, tf_config=None, devices=(), tpu_connects=False):
    """Decide which ``tf.distribute`` strategy fits an environment, and say why.

    The pure decision behind ``strategy``: it reads nothing from the process,
    so any environment can be described to it. With ``kind="auto"`` the rules
    are, in order: a TPU cluster resolver that connects gives ``"tpu"``; a
    ``TF_CONFIG`` whose cluster has several workers (``chief`` and ``worker``
    tasks) gives ``"multiworker"`` (``"default"`` for an ``evaluator`` task);
    several local devices give ``"mirrored"``; anything else ``"default"``.
    Any other ``kind`` is taken as asked (``"multiworker"`` still checks
    ``TF_CONFIG``).

    Args:
        kind: One of ``"auto"``, ``"tpu"``, ``"multiworker"``, ``"mirrored"``,
            ``"default"``, ``"one_device"``. Defaults to ``"auto"``.
        tf_config: The ``TF_CONFIG`` value: a JSON string, a dict, or
            ``None``/``""`` when unset. Defaults to ``None``.
        devices: The local accelerators (or the devices the caller chose), as
            a list of names such as ``["GPU:0", "GPU:1"]`` (``None``: none).
            Defaults to ``()``.
        tpu_connects: Whether a TPU cluster resolver connected. Defaults to
            ``False``.

    Returns:
        A tuple ``(kind, reason)``: one of the concrete kinds (never
        ``"auto"``) and a one-line explanation.

    Raises:
        ValueError: If ``kind`` is unknown, names a parameter server (the
            message names ``MultiWorkerMirroredStrategy``) or a
            ``keras.distribution`` route (JAX-backend only), or ``tf_config``
            is not valid JSON, has ``ps`` tasks or lacks a valid ``task``.
        TypeError: If ``devices`` is not a list of strings.

    Example:
    >>> from nnkit.distribute import choose_strategy
    >>> choose_strategy(devices=["GPU:0", "GPU:1"])
    ('mirrored', '2 local devices (GPU:0, GPU:1)')
    >>> cluster = {"worker": ["host1:2222", "host2:2222"]}
    >>> choose_strategy(tf_config={"cluster": cluster, "task": {"type": "worker", "index": 1}})[0]
    'multiworker'
    >>> choose_strategy()
    ('default', 'no TPU, no multi-worker TF_CONFIG, no GPU')
    """
    kind = _check_kind(kind)
    devices = _check_devices(devices) or []
    v.check_bool("tpu_connects", tpu_connects)
    if kind == "multiworker":
        workers = _num_workers(_parse_tf_config(tf_config, "tf_config"))
        if workers:
            return kind, f"requested; TF_CONFIG names {workers} worker(s)"
        return kind, "requested; no TF_CONFIG cluster, so this process is the only worker"
    if kind != "auto":
        return kind, f"requested (kind={kind!r})"
    if tpu_connects:
        return "tpu", "a TPU cluster resolver connected"
    config = _parse_tf_config(tf_config, "tf_config")
    workers = _num_workers(config)
    if workers > 1:
        task = config["task"]
        if task["type"] == "evaluator":
            return "default", (
                f"TF_CONFIG names {workers} workers and this task is the evaluator, "
                "which evaluates checkpoints on its own"
            )
        return "multiworker", (
            f"TF_CONFIG names {workers} workers; this is task {task['type']}:{task['index']}"
        )
    if len(devices) > 1:
        return "mirrored", _describe(devices)
    cluster = "TF_CONFIG names one worker" if workers == 1 else "no multi-worker TF_CONFIG"
    return "default", f"no TPU, {cluster}, {_describe(devices)}"


def _tf():
    import tensorflow as tf

    return tf


def _connect_tpu(tpu, *, required):
    """A connected ``TPUClusterResolver``, or ``None`` when none connects and not ``required``."""
    tf = _tf()
    if tpu is None and not any(os.environ.get(name) for name in _TPU_ENV):
        # A TPU VM has its TPU attached locally; nothing else hints at one.
        if tf.config.list_physical_devices("TPU"):
            tpu = "local"
        elif not required:
            return None  # no hint at all: don't probe (probing may reach the network)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
        # OSError: a name that is no address is looked up on the GCE metadata
        # server, which is unreachable off Google Cloud (urllib's URLError).
        if required:
            raise ValueError(
                f"A TPU was requested but none could be connected ({error}). Pass "
                "the TPU's name or 'grpc://host:port' address as `tpu`, 'local' on a TPU VM, "
                f"or set TPU_NAME. Received: tpu={tpu!r}"
            ) from error
        return None
    return resolver


def _announce(result, kind, reason, verbose):
    """Record the choice on the strategy (``nnkit_choice``) and say it, or log it at INFO."""
    result.nnkit_choice = (kind, reason)
    line = (
        f"nnkit.distribute.strategy: {type(result).__name__.lstrip('_')} with "
        f"{result.num_replicas_in_sync} replica(s): {reason}"
    )
    if verbose:
        say(line)
    else:
        logger.info(line)
    return result


def strategy(kind="auto", *, devices=None, tpu=None, verbose=1):
    """Build the ``tf.distribute`` strategy that fits this machine and environment.

    Use it at the top of a training script, before building the model, and
    build the model and optimizer in ``strategy.scope()``. With
    ``kind="auto"``, a TPU that connects gives ``TPUStrategy``; a
    ``TF_CONFIG`` with several workers gives ``MultiWorkerMirroredStrategy``;
    several GPUs give ``MirroredStrategy``; otherwise the default strategy
    (``tf.distribute.get_strategy()``). The rules are ``choose_strategy``'s.
    It prints one line saying what it chose and why (``verbose=0``: logged on
    the ``nnkit.distribute`` logger at level INFO instead), e.g.
    ``nnkit.distribute.strategy: MirroredStrategy with 2 replica(s): 2 local
    devices (GPU:0, GPU:1)``, and records the choice on the strategy it
    returns as ``nnkit_choice``, a tuple ``(kind, reason)`` as
    ``choose_strategy`` returns it (``("given", ...)`` for a strategy passed
    in; the default strategy is one object, so it holds the last choice that
    returned it). A TPU is probed only when something hints at one (the
    ``tpu`` argument, ``TPU_NAME``, ``KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS``,
    ``TPU_CONFIG`` or a locally attached TPU). GPUs are counted without
    initializing TensorFlow's runtime, so a ``MultiWorkerMirroredStrategy``
    can still be created (it must be, at program start-up). With a
    ``MultiWorkerMirroredStrategy`` it also applies
    ``nnkit.distribute.fix_multi_worker_fit`` (``fit`` fails in real
    multi-worker mode on Keras 3.15 otherwise).

    Under every strategy, Keras's ``fit(batch_size=...)`` is the global batch,
    split across the replicas (see ``global_batch_size``).

    Args:
        kind: One of ``"auto"``, ``"tpu"``, ``"multiworker"``, ``"mirrored"``,
            ``"default"`` (the strategy in scope, outside any scope the default
            one), ``"one_device"``; or a ``tf.distribute.Strategy``, checked
            and returned as it is. Defaults to ``"auto"``.
        devices: Device names for ``"mirrored"`` (all GPUs when ``None``),
            ``"one_device"`` (one name; the first GPU, else the CPU, when
            ``None``) or ``"auto"`` (the devices to consider instead of the
            GPUs found). Defaults to ``None``.
        tpu: The TPU's name or ``"grpc://host:port"`` address, or ``"local"``
            on a TPU VM; ``None`` lets the resolver read the environment. A
            TPU named here must connect, also with ``kind="auto"``. Defaults
            to ``None``.
        verbose: ``1`` prints the one line saying what was chosen and why (as
            Keras's callbacks print their messages); ``0`` logs it at INFO
            only. Defaults to ``1``.

    Returns:
        A ``tf.distribute.Strategy``, with the attribute ``nnkit_choice``.

    Raises:
        ValueError: If ``kind`` is unknown, names a parameter server (use
            ``MultiWorkerMirroredStrategy``) or ``keras.distribution``
            (JAX-backend only), if the Keras backend is not TensorFlow, if
            ``TF_CONFIG`` is invalid, if ``kind="tpu"`` (or ``tpu`` is
            given) and no TPU connects,
            or if ``devices`` is given for a kind that takes none.
        TypeError: If ``devices`` or ``tpu`` has the wrong type.

    Example:
    >>> from nnkit.distribute import strategy
    >>> s = strategy("default")
    nnkit.distribute.strategy: DefaultDistributionStrategy with 1 replica(s): requested ...
    >>> s.num_replicas_in_sync
    1
    >>> s.nnkit_choice
    ('default', "requested (kind='default')")
    """
    verbose = v.check_int("verbose", verbose, minimum=0)
    if not isinstance(kind, str):
        _check_supported("kind", kind)
        tf = _tf()
        v.check_instance("kind", kind, tf.distribute.Strategy, "a string or tf.distribute.Strategy")
        return _announce(kind, "given", f"the given {type(kind).__name__}", verbose)
    kind = _check_kind(kind)
    require_backend(
        f"nnkit.distribute.strategy(kind={kind!r})",
        ("tensorflow",),
        reason="it builds tf.distribute strategies; on the JAX backend use "
        "keras.distribution (DataParallel, ModelParallel)",
    )
    devices = _check_devices(devices)
    if tpu is not None:
        v.check_str("tpu", tpu, allow_empty=True)
    if devices is not None and kind not in ("auto", "mirrored", "one_device"):
        raise ValueError(
            "`devices` applies only to kind='auto', 'mirrored' or 'one_device'. "
            f"Received: devices={devices!r} with kind={kind!r}"
        )
    if kind == "one_device" and devices is not None and len(devices) != 1:
        raise ValueError(
            f"kind='one_device' takes exactly one device. Received: devices={devices!r}"
        )
    tf = _tf()
    resolver = None
    if kind in ("auto", "tpu"):
        # A TPU named by the caller must connect; one only hinted at may not.
        resolver = _connect_tpu(tpu, required=kind == "tpu" or tpu is not None)
    gpus = [f"GPU:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]
    chosen, reason = choose_strategy(
        kind,
        tf_config=os.environ.get("TF_CONFIG"),
        devices=gpus if devices is None else devices,
        tpu_connects=resolver is not None,
    )
    if chosen == "tpu":
        result = tf.distribute.TPUStrategy(resolver)
    elif chosen == "multiworker":
        result = tf.distribute.MultiWorkerMirroredStrategy()
        fix_multi_worker_fit()  # keras-team/keras#20585, only where this Keras shows it
    elif chosen == "mirrored":
        result = tf.distribute.MirroredStrategy(devices=devices)
    elif chosen == "one_device":
        device = devices[0] if devices else (gpus[0] if gpus else "CPU:0")
        result = tf.distribute.OneDeviceStrategy(device)
    else:
        result = tf.distribute.get_strategy()
    return _announce(result, chosen, reason, verbose)

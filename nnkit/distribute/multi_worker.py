"""Make ``model.fit`` work under ``MultiWorkerMirroredStrategy`` where Keras breaks it.

Keras 3 (up to at least 3.15, TensorFlow backend) fails in ``fit`` under
``tf.distribute.MultiWorkerMirroredStrategy`` as soon as the strategy is in
real multi-worker mode (a ``TF_CONFIG`` cluster with several workers; with one
worker the strategy behaves like ``MirroredStrategy`` and nothing fails),
keras-team/keras#20585. Two places in
``keras/src/backend/tensorflow/trainer.py`` are wrong:

1. ``TensorFlowTrainer._maybe_symbolic_build`` builds the model from the
   first batch of the (distributed) dataset, and first reduces that batch
   with ``strategy.reduce("MEAN", batch, axis=None)``. In multi-worker mode
   that reduce is a collective across workers that takes one tensor, not the
   nested ``(x, y)`` batch: "Attempt to convert a value (PerReplica:...) with
   an unsupported type". Only the batch's shapes and dtypes are used.
   **Change:** build from this worker's first local replica batch
   (``strategy.experimental_local_results(value)[0]``): same shapes and
   dtypes (the per-replica batch, as the mean had), no collective.
2. ``reduce_per_replica``, which reduces the outputs (loss and metric
   values) of every train and test step, reduces with
   ``strategy.reduce("MEAN", value, axis=0)`` in multi-worker mode. The
   values are scalars, which have no axis 0: "Invalid reduction dimension
   0 for input with 0 dimensions". (The ``"sum"`` reduction, from
   ``model.distribute_reduction_method = "sum"``, passes no ``axis`` at all
   and fails with a ``TypeError``.) **Change:** for the ``"auto"``,
   ``"mean"`` and ``"sum"`` reductions, reduce with ``axis=None``: the mean
   (sum) over the replicas, element by element, which is what Keras
   computes with one worker (``tf.reduce_mean`` of the replicas' values
   stacked on a new axis 0). The ``"first"`` and ``"concat"`` reductions
   (``predict``) work and are left to Keras.

Neither change alters training itself: the gradients are all-reduced by the
optimizer as before, so the weights equal those of a single-process run on
the same global batch (tested with two worker processes).

**When it applies.** ``fix_multi_worker_fit`` asks the installed Keras, not a
version string: ``multi_worker_fit_is_broken`` calls the two Keras functions
with a stand-in strategy that says it is in multi-worker mode and, like the
real one, refuses a nested value and a reduction along an axis that a
scalar does not have, without any cluster. Only a function that fails that
way is replaced, so on a Keras that fixes one or both places, nothing (or
only the other) is patched.

**Scope.** The patch replaces the module attribute
``keras.src.backend.tensorflow.trainer.reduce_per_replica`` and the method
``TensorFlowTrainer._maybe_symbolic_build``, process-wide, by wrappers that
handle the multi-worker case and call Keras's own function in every other
case (one device, ``MirroredStrategy``, TPU, a single worker): outside real
multi-worker mode nothing changes. ``nnkit.distribute.strategy`` applies it
when it builds a ``MultiWorkerMirroredStrategy``; call
``fix_multi_worker_fit()`` yourself when you create the strategy directly.
Apply it before ``fit`` (a ``train_function`` traced before keeps Keras's
reduce). ``remove_multi_worker_fit_fix`` puts Keras's functions back. Drop
this module when ``multi_worker_fit_is_broken()`` returns False on an
unpatched Keras.
"""

import contextlib
import functools
import logging

import keras

logger = logging.getLogger(__name__)

#: Set on the replacement functions; marks them as this module's.
_MARK = "_nnkit_multi_worker_fix"
#: The reductions of ``reduce_per_replica`` that fail in multi-worker mode.
_AXIS_REDUCTIONS = {"auto": "MEAN", "mean": "MEAN", "sum": "SUM"}


def _trainer_module():
    """Keras's TensorFlow trainer module, or ``None`` off the TensorFlow backend."""
    if keras.backend.backend() != "tensorflow":
        return None
    from keras.src.backend.tensorflow import trainer

    return trainer


def _in_multi_worker_mode(strategy):
    import tensorflow as tf

    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


# -- the replacements ---------------------------------------------------------


def _first_local(strategy, value):
    import tensorflow as tf

    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _fixed_symbolic_build(original):
    @functools.wraps(original)
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if (
            iterator is not None
            and data_batch is None
            and strategy is not None
            and _in_multi_worker_mode(strategy)
        ):
            # Keras reduces the batch across workers here; its shapes and dtypes suffice.
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(
                    functools.partial(_first_local, strategy), next(batches)
                )
                break
            iterator = None
        return original(self, iterator=iterator, data_batch=data_batch)

    setattr(_maybe_symbolic_build, _MARK, True)
    return _maybe_symbolic_build


def _fixed_reduce_per_replica(original):
    @functools.wraps(original)
    def reduce_per_replica(values, strategy, reduction):
        op = _AXIS_REDUCTIONS.get(reduction)
        if op is None or not _in_multi_worker_mode(strategy):
            return original(values, strategy, reduction)
        # The mean (sum) over replicas, as Keras computes it with one worker.
        return keras.tree.map_structure(lambda v: strategy.reduce(op, v, axis=None), values)

    setattr(reduce_per_replica, _MARK, True)
    return reduce_per_replica


# -- the probe ----------------------------------------------------------------


class _ProbeFailure(Exception):
    """Raised by the stand-in strategy where a real multi-worker strategy fails."""


def _stand_ins():
    """A stand-in multi-worker strategy and a distributed value, without any cluster."""
    import tensorflow as tf

    class Value(tf.distribute.DistributedValues):
        def __init__(self, value):
            self.local = (value,)

    class Extended:
        def _in_multi_worker_mode(self):
            return True

    class MultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
        """Says it is in multi-worker mode; fails where the real one fails in a cluster."""

        def __init__(self):  # no cluster, no runtime
            self._extended = Extended()

        def scope(self):
            return contextlib.nullcontext()

        def experimental_local_results(self, value):
            return value.local if isinstance(value, Value) else (value,)

        def reduce(self, reduce_op, value, axis):
            if not (isinstance(value, Value) or tf.is_tensor(value)):
                raise _ProbeFailure("a collective reduces one value, not a structure")
            local = self.experimental_local_results(value)[0]
            if axis is not None and local.shape.rank == 0:
                raise _ProbeFailure("Invalid reduction dimension 0 for a scalar")
            return local

    return MultiWorker(), Value


class _Trainer:
    """What ``_maybe_symbolic_build`` uses of a model: its strategy and ``_symbolic_build``."""

    def __init__(self, strategy):
        self._distribute_strategy = strategy
        self.built_from = None

    @property
    def distribute_strategy(self):
        return self._distribute_strategy

    def _symbolic_build(self, iterator=None, data_batch=None):
        self.built_from = data_batch


def _fails(name, probe):
    """Whether ``probe()`` fails as Keras does under a multi-worker strategy."""
    try:
        probe()
    except _ProbeFailure:
        return True
    except Exception as error:  # noqa: BLE001 - a Keras this probe does not fit
        logger.warning(
            "nnkit.distribute: could not probe Keras's %s (%s: %s); it is left as it is.",
            name,
            type(error).__name__,
            error,
        )
    return False


def _symbolic_build_fails(trainer):
    import tensorflow as tf

    strategy, value = _stand_ins()
    batch = (value(tf.zeros((2, 3))), value(tf.zeros((2, 1))))
    model = _Trainer(strategy)
    build = trainer.TensorFlowTrainer._maybe_symbolic_build
    return _fails(
        "TensorFlowTrainer._maybe_symbolic_build",
        lambda: build(model, iterator=[(0, 0, iter([batch]))]),
    )


def _reduce_fails(trainer):
    import tensorflow as tf

    strategy, _ = _stand_ins()
    logs = {"loss": tf.constant(1.0)}
    return any(
        _fails("reduce_per_replica", lambda r=r: trainer.reduce_per_replica(logs, strategy, r))
        for r in _AXIS_REDUCTIONS
    )


def _broken_parts():
    """``(owner, attribute name, make the replacement)`` for each place that fails now."""
    trainer = _trainer_module()
    if trainer is None:
        return []
    parts = []
    if _symbolic_build_fails(trainer):
        parts.append((trainer.TensorFlowTrainer, "_maybe_symbolic_build", _fixed_symbolic_build))
    if _reduce_fails(trainer):
        parts.append((trainer, "reduce_per_replica", _fixed_reduce_per_replica))
    return parts


# -- the public functions -----------------------------------------------------


def multi_worker_fit_is_broken():
    """Whether ``model.fit`` under ``MultiWorkerMirroredStrategy`` fails with this Keras now.

    A cheap probe of the installed Keras (no cluster, no training, about a
    millisecond): it calls the two Keras functions that fail in
    keras-team/keras#20585 with a stand-in strategy that behaves like a
    ``MultiWorkerMirroredStrategy`` in multi-worker mode (see the module
    documentation). It answers for Keras as it is now, so it is ``False``
    once :func:`fix_multi_worker_fit` is applied, and off the TensorFlow
    backend.

    Args:
        None: it probes the installed Keras as it is now.

    Returns:
        True when at least one of the two functions fails.

    Example:
    >>> from nnkit.distribute import fix_multi_worker_fit, multi_worker_fit_is_broken
    >>> from nnkit.distribute import remove_multi_worker_fit_fix
    >>> _ = remove_multi_worker_fit_fix()  # Keras's own functions
    >>> multi_worker_fit_is_broken()  # Keras 3.15
    True
    >>> fix_multi_worker_fit()
    True
    >>> multi_worker_fit_is_broken()
    False
    >>> remove_multi_worker_fit_fix()
    True
    """
    return bool(_broken_parts())


def fix_multi_worker_fit():
    """Patch Keras so that ``fit`` works under ``MultiWorkerMirroredStrategy``; say if it did.

    Replaces each of the two Keras functions that fail in multi-worker mode
    (keras-team/keras#20585), and only those that the probe of
    :func:`multi_worker_fit_is_broken` shows failing, by a wrapper that
    handles the multi-worker case and calls Keras's own function otherwise.
    What changes and why is in the documentation of
    ``nnkit.distribute.multi_worker``. Idempotent: a second call finds
    nothing broken and returns False. ``nnkit.distribute.strategy`` calls it
    when it builds a ``MultiWorkerMirroredStrategy``. Call it before ``fit``.

    Args:
        None: it acts on the installed Keras, process-wide.

    Returns:
        True when it patched something now; False when Keras works already
        (fixed upstream, already patched, or not the TensorFlow backend).

    Example:
    >>> from nnkit.distribute import fix_multi_worker_fit, remove_multi_worker_fit_fix
    >>> _ = remove_multi_worker_fit_fix()  # start from Keras's own functions
    >>> fix_multi_worker_fit(), fix_multi_worker_fit()  # Keras 3.15: patched once
    (True, False)
    >>> remove_multi_worker_fit_fix()  # Keras's own functions again
    True
    """
    parts = _broken_parts()
    for owner, name, fixed in parts:
        setattr(owner, name, fixed(getattr(owner, name)))
    if parts:
        logger.info(
            "nnkit.distribute: patched Keras's %s for multi-worker fit (keras-team/keras#20585)",
            " and ".join(name for _, name, _ in parts),
        )
    return bool(parts)


def remove_multi_worker_fit_fix():
    """Undo :func:`fix_multi_worker_fit`: put Keras's own functions back; say if it did.

    A ``train_function`` traced while the fix was applied keeps it; set
    ``model.train_function = None`` (or compile again) to trace anew.

    Args:
        None: it acts on the installed Keras, process-wide.

    Returns:
        True when a patched function was restored, False when none was
        patched.

    Example:
    >>> from nnkit.distribute import fix_multi_worker_fit, remove_multi_worker_fit_fix
    >>> _ = fix_multi_worker_fit()
    >>> remove_multi_worker_fit_fix(), remove_multi_worker_fit_fix()
    (True, False)
    """
    trainer = _trainer_module()
    if trainer is None:
        return False
    removed = False
    for owner, name in (
        (trainer.TensorFlowTrainer, "_maybe_symbolic_build"),
        (trainer, "reduce_per_replica"),
    ):
        current = vars(owner).get(name)
        if getattr(current, _MARK, False):
            setattr(owner, name, current.__wrapped__)
            removed = True
    return removed

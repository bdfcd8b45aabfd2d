"""The two places where Keras 3 breaks ``fit`` under ``MultiWorkerMirroredStrategy``, and their fix.

What is wrong and what changes is explained in ``nnkit.distribute.multi_worker``
(keras-team/keras#20585). This module holds the mechanics: the probes of the
installed Keras, the replacement functions and their installation.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``):

- ``multi-worker-symbolic-build``: ``keras.src.backend.tensorflow.trainer.
  <trainer class>._maybe_symbolic_build(iterator=, data_batch=)`` (the class is
  ``TensorFlowTrainer`` up to Keras 3.15, ``Trainer`` from 3.16: found as the
  base of ``keras.Model`` defined in that module) builds the
  model from the first batch, reduced across replicas (it fails in real
  multi-worker mode), or a Keras that fixed it.
- ``multi-worker-reduce-per-replica``: the module function
  ``trainer.reduce_per_replica(values, strategy, reduction)`` reduces every
  step's outputs (it fails in multi-worker mode for scalars), or a fixed one.
- ``multi-worker-mode``: ``strategy.extended._in_multi_worker_mode()`` says
  whether a ``MultiWorkerMirroredStrategy`` spans several workers.

The probes call Keras's functions with a stand-in strategy (no cluster), so
they tell "broken as in #20585" from "fixed"; a Keras they do not fit is
left alone, with a warning. The replacements are marked, wrap Keras's own
function (``__wrapped__``) and are removed by ``remove``.
"""

import contextlib
import functools
import logging

import keras

logger = logging.getLogger("nnkit.distribute.multi_worker")

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


def trainer_class(trainer):
    """The TensorFlow backend's trainer class: the base of ``keras.Model`` in ``trainer``."""
    for cls in keras.Model.__mro__:
        if cls.__module__ == trainer.__name__:
            return cls
    raise RuntimeError(
        "nnkit: keras.Model has no base class in Keras's TensorFlow trainer module "
        f"({trainer.__name__}); the multi-worker fix does not fit this Keras "
        f"({keras.__version__}). See nnkit/_keras/multi_worker.py."
    )


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
    build = trainer_class(trainer)._maybe_symbolic_build
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
        parts.append((trainer_class(trainer), "_maybe_symbolic_build", _fixed_symbolic_build))
    if _reduce_fails(trainer):
        parts.append((trainer, "reduce_per_replica", _fixed_reduce_per_replica))
    return parts


# -- installing -----------------------------------------------------------------


def broken_parts():
    """``(owner, attribute name, make the replacement)`` for each place that fails now."""
    return _broken_parts()


def apply(parts):
    """Replace each of ``parts`` (from ``broken_parts``) by its wrapper."""
    for owner, name, fixed in parts:
        setattr(owner, name, fixed(getattr(owner, name)))


def remove():
    """Put Keras's own functions back; return whether one was patched."""
    trainer = _trainer_module()
    if trainer is None:
        return False
    removed = False
    for owner, name in (
        (trainer_class(trainer), "_maybe_symbolic_build"),
        (trainer, "reduce_per_replica"),
    ):
        current = vars(owner).get(name)
        if getattr(current, _MARK, False):
            setattr(owner, name, current.__wrapped__)
            removed = True
    return removed

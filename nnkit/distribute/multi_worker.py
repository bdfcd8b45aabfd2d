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

**Scope.** The patch (``nnkit._keras.multi_worker``) replaces the module
attribute ``keras.src.backend.tensorflow.trainer.reduce_per_replica`` and the
method ``TensorFlowTrainer._maybe_symbolic_build``, process-wide, by wrappers that
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

import logging

from nnkit._keras import multi_worker as _patch

logger = logging.getLogger(__name__)


# -- the public functions -----------------------------------------------------


def multi_worker_fit_is_broken():
    """Whether ``model.fit`` under ``MultiWorkerMirroredStrategy`` fails with this Keras now.

    A cheap probe of the installed Keras (no cluster, no training, about a
    millisecond): it calls the two Keras functions that fail in
    keras-team/keras#20585 with a stand-in strategy that behaves like a
    ``MultiWorkerMirroredStrategy`` in multi-worker mode (see the module
    documentation). It answers for Keras as it is now, so it is ``False``
    once ``fix_multi_worker_fit`` is applied, on a Keras that fixed the
    bug, and off the TensorFlow backend.

    It takes no arguments: it probes the installed Keras as it is now.

    Returns:
        True when at least one of the two functions fails.

    Example:
    >>> from nnkit.distribute import fix_multi_worker_fit, multi_worker_fit_is_broken
    >>> from nnkit.distribute import remove_multi_worker_fit_fix
    >>> _ = fix_multi_worker_fit()  # patches only what fails (nothing on a fixed Keras)
    >>> multi_worker_fit_is_broken()
    False
    >>> _ = remove_multi_worker_fit_fix()  # Keras's own functions again
    """
    return bool(_patch.broken_parts())


def fix_multi_worker_fit():
    """Patch Keras so that ``fit`` works under ``MultiWorkerMirroredStrategy``; say if it did.

    Replaces each of the two Keras functions that fail in multi-worker mode
    (keras-team/keras#20585), and only those that the probe of
    ``multi_worker_fit_is_broken`` shows failing, by a wrapper that
    handles the multi-worker case and calls Keras's own function otherwise.
    What changes and why is in the documentation of
    ``nnkit.distribute.multi_worker``. Idempotent: a second call finds
    nothing broken and returns False. ``nnkit.distribute.strategy`` calls it
    when it builds a ``MultiWorkerMirroredStrategy``. Call it before ``fit``.

    It takes no arguments: it acts on the installed Keras, process-wide.

    Returns:
        True when it patched something now; False when Keras works already
        (fixed upstream, already patched, or not the TensorFlow backend).

    Example:
    >>> from nnkit.distribute import fix_multi_worker_fit, remove_multi_worker_fit_fix
    >>> _ = fix_multi_worker_fit()
    >>> fix_multi_worker_fit()  # idempotent: nothing is left to patch
    False
    >>> _ = remove_multi_worker_fit_fix()  # Keras's own functions again
    """
    parts = _patch.broken_parts()
    _patch.apply(parts)
    if parts:
        logger.info(
            "nnkit.distribute: patched Keras's %s for multi-worker fit (keras-team/keras#20585)",
            " and ".join(name for _, name, _ in parts),
        )
    return bool(parts)


def remove_multi_worker_fit_fix():
    """Undo ``fix_multi_worker_fit``: put Keras's own functions back; say if it did.

    A ``train_function`` traced while the fix was applied keeps it; set
    ``model.train_function = None`` (or compile again) to trace anew.

    It takes no arguments: it acts on the installed Keras, process-wide.

    Returns:
        True when a patched function was restored, False when none was
        patched.

    Example:
    >>> from nnkit.distribute import fix_multi_worker_fit, remove_multi_worker_fit_fix
    >>> patched = fix_multi_worker_fit()  # False on a Keras that fixed the bug
    >>> remove_multi_worker_fit_fix() == patched, remove_multi_worker_fit_fix()
    (True, False)
    """
    return _patch.remove()

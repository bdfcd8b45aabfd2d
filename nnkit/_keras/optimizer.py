"""What nnkit reads and changes inside a Keras optimizer that Keras has no public API for.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``):

- ``optimizer-learning-rate``: ``optimizer._learning_rate`` holds what the
  optimizer evaluates at every step: the ``LearningRateSchedule`` (or plain
  callable) it was given, or the ``keras.Variable`` of a float rate. The
  public ``optimizer.learning_rate`` only returns the current *value*, and
  its setter accepts a schedule, so writing goes through the public setter.
- ``optimizer-raw-iterations``: ``optimizer._iterations`` counts raw steps
  (micro-batches under ``gradient_accumulation_steps``); an update evaluates
  the schedule at it and then increments it. ``optimizer.iterations`` counts
  updates (``_iterations // G``).
- ``optimizer-trainable-variables``: ``optimizer._trainable_variables`` lists
  the variables given to ``build``, in order; ``apply(grads)`` without
  variables updates those.
- ``optimizer-apply``: the train step (TensorFlow and JAX) calls
  ``optimizer.apply(grads, trainable_variables)``, looked up on the
  instance, once per step (JAX through ``stateless_apply``).
- ``optimizer-clip-gradients``: ``optimizer._clip_gradients(grads)`` applies
  ``clipnorm``/``global_clipnorm``/``clipvalue``; ``apply`` calls it (looked
  up on the instance) before the update.
- ``optimizer-variables`` (JAX): ``optimizer._variables`` is the list that
  ``optimizer.variables`` copies, and the JAX trainer's stateless step
  carries exactly ``optimizer.variables`` in and out of
  ``stateless_apply``; ``save_own_variables`` (looked up on the instance
  when a model is saved) writes them in that order.
- ``optimizer-variable-index``: ``optimizer._get_variable_index(variable)``
  is the position, in the list given to ``build``, of the variable that
  ``update_step`` receives: a ``keras.Variable`` on JAX, the backend
  ``tf.Variable`` on TensorFlow and, under ``tf.distribute``, one replica's
  component of it (Keras maps the component to its distributed container).
"""

import contextlib

import keras

from nnkit._keras import shadow


def learning_rate_object(optimizer):
    """The schedule, callable or rate variable the optimizer evaluates at every step."""
    return optimizer._learning_rate


def raw_iterations(optimizer):
    """The raw step counter (a ``keras.Variable``) the schedule is evaluated at."""
    return optimizer._iterations


def trainable_variables(optimizer):
    """The variables the optimizer was built for, in order (a new list)."""
    return list(optimizer._trainable_variables)


def variable_index(optimizer, variable):
    """The position of ``variable`` (as ``update_step`` receives it) in the list given to build.

    nnkit's optimizers keep their per-variable state in lists indexed by it,
    as Keras's own optimizers do.
    """
    return optimizer._get_variable_index(variable)


def clip_gradients(optimizer, grads):
    """Keras's own clipping of ``grads`` by the optimizer's settings.

    Uses the method beneath any nnkit patch, so it still clips when
    ``nnkit.distribute.clip_after_aggregation`` has moved the clipping.
    """
    return shadow.original(optimizer, "_clip_gradients")(grads)


def carry_variables(optimizer, variables):
    """Add ``variables`` to ``optimizer.variables`` (JAX: the stateless step then carries them)."""
    optimizer._variables.extend(variables)


def drop_variables(optimizer, variables):
    """Remove ``variables`` (added by ``carry_variables``) from ``optimizer.variables``.

    Element by element: on TensorFlow the list is a tracked wrapper whose
    slice assignment compares variables with ``!=`` (a tensor op).
    """
    dropped = {id(w) for w in variables}
    store = optimizer._variables
    for index in reversed(range(len(store))):
        if id(store[index]) in dropped:
            del store[index]


@contextlib.contextmanager
def without_variables(optimizer, variables):
    """``optimizer.variables`` without ``variables`` for the duration (e.g. while saving)."""
    dropped = {id(w) for w in variables}
    store = optimizer._variables
    removed = [(i, w) for i, w in enumerate(store) if id(w) in dropped]
    drop_variables(optimizer, variables)
    try:
        yield
    finally:
        for index, w in removed:
            store.insert(index, w)


def is_keras_optimizer(optimizer):
    """Whether ``optimizer`` is a Keras 3 optimizer (what every function here expects)."""
    return isinstance(optimizer, keras.optimizers.Optimizer)


def suspend_clipping(optimizer, *, owner):
    """Make the optimizer's own (per-replica) clipping a no-op; return the patch.

    ``clip_gradients`` still clips. ``shadow.unshadow(patch)`` undoes it.
    """
    return shadow.shadow(optimizer, "_clip_gradients", lambda call_next, grads: grads, owner=owner)


def clipping_suspended(optimizer, *, owner):
    """Whether ``suspend_clipping`` by ``owner`` is in effect on ``optimizer``."""
    return shadow.is_shadowed(optimizer, "_clip_gradients", owner)


def restore_clipping(optimizer, *, owner):
    """Undo ``suspend_clipping`` by ``owner`` (nothing when it is not in effect)."""
    patch = shadow.find(optimizer, "_clip_gradients", owner)
    if patch is not None:
        shadow.unshadow(patch)

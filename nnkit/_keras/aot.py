"""An ahead-of-time compile of Keras's own JAX train step, on shapes only (no model memory).

``nnkit.distribute.plan_layout`` given a building function plans on a model
built on shapes only (``shapes_only``), and
``nnkit.distribute.estimate_memory`` builds the model and its optimizer inside
``keras.StatelessScope(initialize_variables=False)``, so no variable is
allocated, gives every variable the layout the distribution would, and
compiles the train step Keras would jit on ``jax.ShapeDtypeStruct``s carrying
those shardings; ``memory_analysis()`` of that compile is the real one's.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``, run on JAX):

- ``stateless-build``: inside ``keras.StatelessScope(initialize_variables=False)``
  a model can be built, compiled and its optimizer built (the optimizer itself
  created outside, since its iteration counter has a value, not an
  initializer) without allocating a variable; each keeps its shape, dtype and
  path and is appended to the global list
  ``global_state`` ``"uninitialized_variables"``, which the next stateless
  scope that exits with ``initialize_variables=True`` (Keras's JAX trainer
  opens such scopes) would allocate, so they are removed from it here.
- ``slot-layout``: on JAX, ``optimizer.build`` gives each slot the
  ``variable._layout`` of its weight (``add_variable_from_reference``); set
  here from ``distribution.get_variable_layout`` before the build, since a
  deferred variable gets its layout only at initialization.
- ``jax-train-step``: on JAX, ``model.train_step(state, data)`` is a pure
  function of ``state = (trainable, non_trainable, optimizer.variables,
  metrics_variables)`` values and ``data = (x, y)``, which Keras jits with
  ``donate_argnums=0`` and ``out_shardings=(None, state shardings)`` under a
  distribution (``make_train_function``).
"""

import contextlib

import keras
from keras.src.backend.common import global_state


def _forget(variables):
    """Remove ``variables`` from Keras's list of variables to allocate later."""
    ids = {id(variable) for variable in variables}
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    global_state.set_global_attribute(
        "uninitialized_variables", [v for v in pending if id(v) not in ids]
    )


def state_groups(model):
    """The four variable lists of the JAX train step's state, in its order (``jax-train-step``)."""
    return (
        list(model.trainable_variables),
        list(model.non_trainable_variables),
        list(model.optimizer.variables),
        list(model.metrics_variables),
    )


def shapes_only(build_fn):
    """``build_fn()``'s model with its variables' shapes, dtypes and paths, none allocated."""
    model = None
    with keras.StatelessScope(initialize_variables=False):
        try:
            model = build_fn()
        finally:
            if isinstance(model, keras.Model):
                _forget(model.variables)
    return model


def abstract_model(build_fn, distribution, optimizer, loss):
    """``build_fn()``'s model, compiled with its optimizer built, no variable allocated.

    Every variable (slots included) carries ``distribution``'s layout.
    """
    created = []
    with distribution.scope():
        with keras.StatelessScope(initialize_variables=False):
            try:
                model = build_fn()
                for variable in model.variables:
                    variable._layout = distribution.get_variable_layout(variable)
                model.compile(optimizer=optimizer, loss=loss)
                model.optimizer.build(model.trainable_variables)
            finally:
                with contextlib.suppress(NameError, AttributeError):
                    created = [v for group in state_groups(model) for v in group]
                _forget(created)
    for variable in created:
        if getattr(variable, "_layout", None) is None:
            variable._layout = distribution.get_variable_layout(variable)
    return model


def variable_sharding(variable):
    """The ``jax.sharding.Sharding`` of a variable of an ``abstract_model``."""
    return variable._layout.backend_layout


def compile_train_step(model, state, data, distribution):
    """``jax.jit(model.train_step)`` as Keras makes it, compiled for ``state`` and ``data``.

    ``state`` and ``data`` may be arrays or ``jax.ShapeDtypeStruct``s with shardings.
    """
    import jax

    shardings = tuple([leaf.sharding for leaf in group] for group in state)
    with distribution.scope():
        step = jax.jit(model.train_step, donate_argnums=0, out_shardings=(None, shardings))
        return step.lower(state, data).compile()

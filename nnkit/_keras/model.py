"""What nnkit reads of a model's build state that Keras keeps private.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``):

- ``functional-inputs``: a functional model (``keras.Model(inputs, outputs)``)
  has ``_inputs_struct``, the nested structure of its inputs, and its public
  ``model.input`` follows it; a subclassed model has neither.
- ``build-shapes``: a model built by ``build(shape)`` (or by its first call)
  records the shapes in ``_build_shapes_dict``, ``{argument name: shape}``.
"""


def is_functional(model):
    """Whether ``model`` is a functional model (its inputs are symbolic tensors)."""
    return hasattr(model, "_inputs_struct")


def build_shapes(model):
    """``{argument name: shape}`` the model was built with (empty when unknown)."""
    return dict(getattr(model, "_build_shapes_dict", None) or {})

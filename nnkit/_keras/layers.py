"""Walking a model's nested layers and adding state to a built layer, which Keras does privately.

Assumptions (each has a probe in ``tests/_keras/test_probes.py``):

- ``flatten-layers``: ``layer._flatten_layers(include_self, recursive)``
  yields every layer nested in ``layer`` (sub-models, layers held as
  attributes of custom layers, lists of layers, input layers) exactly once.
  ``model.layers`` lists only the direct children.
- ``late-weights``: a built layer refuses new weights because its
  ``layer._tracker`` is locked; while it is unlocked, ``layer.add_weight``
  works as during ``build`` (the new weight joins ``layer.weights`` after the
  layer's own, and ``model.trainable_weights``), and
  ``layer._untrack_variable(variable)`` removes such a weight again, leaving
  the tracker locked as it was.

Three more that ``KFAC``'s capture (``nnkit/optimizers/_kfac_capture.py``)
rests on: it shadows a registered layer's ``call`` with the same computation
written from the layer's public attributes plus an identity tap, and its
``save_own_variables``/``load_own_variables`` to leave its channels out.

- ``dense-call``: ``Layer.__call__`` runs ``layer.call`` as looked up on the
  instance (so a shadow takes effect), and a ``Dense`` layer without LoRA or
  quantization computes ``activation(inputs @ kernel + bias)`` from its
  public ``kernel``, ``bias`` (``None`` without one) and ``activation``,
  whatever ``training`` is.
- ``conv-call``: a ``Conv1D``/``Conv2D``/``Conv3D`` layer (``groups=1``, no
  LoRA, not quantized) computes ``activation(convolution_op(inputs, kernel) +
  bias)``, the bias broadcast along the channels axis of ``data_format``; a
  causal ``Conv1D`` left-pads by ``dilation_rate·(kernel_size − 1)`` and
  convolves with ``"valid"``.
- ``einsum-call``: an ``EinsumDense`` layer computes
  ``activation(einsum(equation, inputs, kernel) + bias)``.
- ``embedding-call``: an ``Embedding`` layer computes
  ``take(embeddings, ids, axis=0)`` in its compute dtype.
- ``layer-norm-call``: a ``LayerNormalization`` layer (``rms_scaling=False``)
  computes ``(x − mean)·rsqrt(variance + epsilon)·gamma + beta`` over its
  ``axis`` (a sorted list once built).
- ``layer-own-variables``: saving a model calls each layer's
  ``save_own_variables(store)`` and loading its ``load_own_variables(store)``,
  looked up on the instance, with the keys ``"0"``, ``"1"``, … in
  ``layer.weights`` order.
"""

import contextlib

import keras


def walk(layer, *, include_self=True, recursive=True):
    """Every layer nested in ``layer`` (itself first with ``include_self``), each once."""
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def batch_norm_layers(model):
    """Every ``keras.layers.BatchNormalization`` in ``model`` (itself included), nested ones too.

    Subclasses included. The one copy: synchronizing batch normalization
    (``nnkit.distribute``) and recomputing its statistics
    (``nnkit.callbacks``) look for the same layers.
    """
    return [layer for layer in walk(model) if isinstance(layer, keras.layers.BatchNormalization)]


def seed_generators(layer):
    """The ``keras.random.SeedGenerator`` objects ``layer`` itself owns (e.g. a dropout's).

    Assumption ``seed-generators``: a layer records the seed generators it
    creates as attributes in ``layer._seed_generators``.
    """
    return tuple(getattr(layer, "_seed_generators", ()))


@contextlib.contextmanager
def unlocked(layer):
    """A block in which ``layer.add_weight`` works although ``layer`` is built (``late-weights``).

    The tracker is locked again afterwards if it was locked before.
    """
    tracker = layer._tracker
    was_locked = tracker.locked
    tracker.unlock()
    try:
        yield layer
    finally:
        if was_locked:
            tracker.lock()


def remove_weight(layer, variable):
    """Take a weight added in ``unlocked`` off ``layer`` again (``late-weights``)."""
    layer._untrack_variable(variable)


def set_regularizer(layer, attribute, regularizer):
    """Set ``layer``'s constructor argument ``attribute`` (``"kernel_regularizer"``, ...).

    Keras has no public setter for a built layer's regularizer arguments; this
    writes the attribute its ``get_config`` reads (``late-regularizer``).
    """
    setattr(layer, attribute, regularizer)

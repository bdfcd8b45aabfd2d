"""Walking a model's nested layers, which Keras does only through a private method.

Assumption (probe in ``tests/_keras/test_probes.py``):

- ``flatten-layers``: ``layer._flatten_layers(include_self, recursive)``
  yields every layer nested in ``layer`` (sub-models, layers held as
  attributes of custom layers, lists of layers, input layers) exactly once.
  ``model.layers`` lists only the direct children.
"""


def walk(layer, *, include_self=True, recursive=True):
    """Every layer nested in ``layer`` (itself first with ``include_self``), each once."""
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def seed_generators(layer):
    """The ``keras.random.SeedGenerator`` objects ``layer`` itself owns (e.g. a dropout's).

    Assumption ``seed-generators``: a layer records the seed generators it
    creates as attributes in ``layer._seed_generators``.
    """
    return tuple(getattr(layer, "_seed_generators", ()))

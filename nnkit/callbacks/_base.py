"""Pieces every nnkit callback shares: ``from_config`` and deep copies."""

import copy

from nnkit._keras import fit as keras_fit


class CallbackMixin:
    """``from_config`` and a ``__deepcopy__`` that never copies what the run attached.

    keras-tuner deep-copies callbacks for every trial. A copy keeps the
    settings and the state but not the model (``fit``'s attachments,
    ``nnkit._keras.fit.ATTACHED``) nor anything a subclass lists in
    ``_not_copied`` (e.g. an optimizer or a summary writer), which the next
    ``fit`` attaches again.
    """

    _not_copied = ()

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __deepcopy__(self, memo):
        result = copy.copy(self)
        memo[id(self)] = result
        skipped = (*keras_fit.ATTACHED, *self._not_copied)
        for key, value in self.__dict__.items():
            result.__dict__[key] = None if key in skipped else copy.deepcopy(value, memo)
        return result

    def _attached_model(self):
        """The model of the running ``fit`` (``None`` before), without a JAX state sync."""
        return keras_fit.attached_model(self)

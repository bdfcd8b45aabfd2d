"""What nnkit calls a *parameter*: a variable the user trains.

Keras's ``trainable_variables`` also lists variables that are trainable only
so that the backward pass can hand a value to them: a variable created with
``overwrite_with_gradient=True`` is not updated by the optimizer's rule but
overwritten with its "gradient" (Keras's float8 ``Dense`` carries its scales
and amax histories this way, and ``nnkit.optimizers.KFAC`` its factor
statistics channels). Their "gradient" is a statistic, not a derivative of the
loss, and their value is not a weight of the model.

Every nnkit part that measures, perturbs, averages, regularizes or adapts
"the model's weights" (the gradient monitor, SAM, SWA, the regularizers, the
meta-learners) takes them from here, so none of them mistakes such a channel
for a parameter. (``nnkit.distribute.check`` reads only non-trainable state
and batch-normalization layers, so it has no parameter list to filter.) Where a part must keep Keras's full
list (the gradients a train step computes for every trainable variable), it
filters both sides with ``is_parameter``. ``apply_regularization`` picks
kernels whatever the layer's current ``trainable`` flag (a frozen layer may be
trained later) but never a statistics channel (``is_statistics_channel``).
"""


def is_statistics_channel(variable):
    """Whether the optimizer overwrites ``variable`` with its "gradient" (``overwrite_with_gradient``)."""
    return bool(getattr(variable, "overwrite_with_gradient", False))


def is_parameter(variable):
    """Whether ``variable`` is trainable and not a statistics channel."""
    return bool(variable.trainable) and not is_statistics_channel(variable)


def parameters(model):
    """The parameters of a model or layer: its trainable variables that are parameters, in order."""
    return [variable for variable in model.trainable_variables if is_parameter(variable)]

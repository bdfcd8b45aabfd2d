"""What nnkit's train-step wrappers need of Keras's trainer that Keras keeps private.

Assumption (probe in ``tests/_keras/test_probes.py``):

- ``loss-tracker``: ``model._loss_tracker`` is the ``keras.metrics.Mean``
  that ``fit`` logs as ``"loss"`` (``compile`` creates it; ``None`` before).
  Keras's own train steps (TensorFlow and JAX) update it once per step with
  the step's total loss, unscaled for distribution, weighted by the batch
  size. A ``train_step`` written outside Keras must do the same for
  ``fit``'s ``"loss"`` to mean what it means with Keras's step; there is no
  public hook for it (``compute_loss`` does not update it).
"""


def loss_tracker(model):
    """The ``Mean`` metric behind ``fit``'s ``"loss"`` log (``None`` before ``compile``)."""
    return model._loss_tracker

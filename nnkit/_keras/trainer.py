"""What nnkit's train-step wrappers need of Keras's trainer that Keras keeps private.

Assumptions (probes in ``tests/_keras/test_probes.py``):

- ``loss-tracker``: ``model._loss_tracker`` is the ``keras.metrics.Mean``
  that ``fit`` logs as ``"loss"`` (``compile`` creates it; ``None`` before).
  Keras's own train steps (TensorFlow and JAX) update it once per step with
  the step's total loss, unscaled for distribution, weighted by the batch
  size. A ``train_step`` written outside Keras must do the same for
  ``fit``'s ``"loss"`` to mean what it means with Keras's step; there is no
  public hook for it (``compute_loss`` does not update it).
- ``symbolic-build``: ``model._symbolic_build(data_batch=batch)`` builds the
  compiled metrics and loss (so ``model.metrics_variables`` lists all of
  them) from one batch's shapes, changing no variable's value; on
  TensorFlow, ``fit`` leaves them unbuilt until the first step when the
  model has no ``tf.distribute`` strategy.
"""


def loss_tracker(model):
    """The ``Mean`` metric behind ``fit``'s ``"loss"`` log (``None`` before ``compile``)."""
    return model._loss_tracker


def build_metrics(model, batch):
    """Build ``model``'s compiled metrics from ``batch`` (an ``(x, y[, w])`` tuple) if unbuilt."""
    model._symbolic_build(data_batch=batch)

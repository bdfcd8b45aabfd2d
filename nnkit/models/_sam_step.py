"""The sharpness-aware train step: two gradient evaluations per step, in the compiled step.

For each part of the batch (``num_batch_splits`` contiguous parts, 1 by
default):

1. pass 1 at the weights ``w``: loss, predictions and the gradient ``g``;
   the model's non-trainable state (batch-norm moving statistics,
   seed-generator states) is updated as in Keras's own step;
2. ``ε = perturbation(g, w)`` (`perturbation`), over the parameters only
   (statistics channels, ``nnkit._parameters``, are not perturbed);
3. pass 2 at ``w + ε``: the gradient ``g'``, computed *statelessly* from
   the non-trainable state as it was before pass 1, and that state's
   updates discarded: batch normalization normalizes with the batch's
   statistics (training mode) but its moving statistics are updated by
   pass 1 only, and dropout draws the same masks as in pass 1. The weights
   are never written: pass 2 reads ``w + ε`` through a
   ``keras.StatelessScope`` (TensorFlow) or as the values of a stateless
   call (JAX), so nothing needs restoring.

The optimizer then applies the parts' ``g'`` averaged with weights
``n_i / n`` (part sizes) at ``w``: the only gradient it sees. Loss and
metrics are those of pass 1 (at ``w``), as with Keras's step.
"""

import keras
from keras import ops

from nnkit._keras import trainer as keras_trainer
from nnkit._parameters import is_parameter
from nnkit.models._wrapper import map_rows

#: Added to ‖g‖ so that a zero gradient gives ε = 0 (the reference implementations' 1e-12).
EPSILON = 1e-12


def perturbation(grads, weights, rho, adaptive, *, eta=0.0, unscaled=None):
    """``ε`` for each weight: ``ρ · T² g / ‖T g‖``, ``T = |w| + η`` (adaptive) or ``1``.

    ``‖·‖`` is the norm over all the weights together; ``None`` gradients give
    ``None``. With ``adaptive=False`` this is ``ρ · g / ‖g‖``. ``unscaled``
    (a bool per weight, adaptive only) marks the weights that take ``T = 1``
    (the official ASAM code's biases).
    """
    unscaled = [False] * len(weights) if unscaled is None else unscaled

    def t(w, plain):
        return None if plain or not adaptive else ops.abs(w) + ops.cast(eta, w.dtype)

    factors = [t(w, plain) for w, plain in zip(weights, unscaled, strict=True)]
    scaled = [
        None if g is None else (g if f is None else f * g)
        for g, f in zip(grads, factors, strict=True)
    ]
    squares = [ops.sum(ops.square(ops.cast(s, "float32"))) for s in scaled if s is not None]
    if not squares:
        return [None] * len(scaled)
    norm = ops.sqrt(ops.sum(ops.stack(squares)))
    scale = rho / (norm + EPSILON)
    return [
        None if s is None else ops.cast((s if f is None else f * s) * scale, w.dtype)
        for s, f, w in zip(scaled, factors, weights, strict=True)
    ]


def parameter_perturbation(variables, grads, weights, rho, adaptive, *, eta=0.0, unscaled=None):
    """``perturbation`` over the parameters among ``variables``; ``None`` for every other one.

    A statistics channel (``nnkit._parameters``: K-FAC's, float8's scales) is
    trainable only to receive a statistic as its "gradient": it is neither
    perturbed nor part of ``‖g‖``. ``eta`` and ``unscaled`` (one bool per
    variable) are ``perturbation``'s.
    """
    kept = [k for k, variable in enumerate(variables) if is_parameter(variable)]
    unscaled = [False] * len(variables) if unscaled is None else unscaled
    eps = perturbation(
        [grads[k] for k in kept],
        [weights[k] for k in kept],
        rho,
        adaptive,
        eta=eta,
        unscaled=[unscaled[k] for k in kept],
    )
    full = [None] * len(variables)
    for k, e in zip(kept, eps, strict=True):
        full[k] = e
    return full


def _first_rows(x):
    return next(t for t in keras.tree.flatten(x) if t is not None)


def _take(value, lo, hi):
    """Rows ``[lo, hi)`` of every array in ``value`` (a mixed batch's scalar weight kept)."""
    return map_rows(lambda t: t[lo:hi], value)


def split_batch(x, y, sample_weight, parts):
    """``[((x_i, y_i, w_i), n_i / n)]``: ``min(parts, n)`` contiguous parts of the batch.

    Contiguous, as ``MirroredStrategy`` splits a global batch between
    replicas. Part ``i`` holds rows ``[⌊i·n/parts⌋, ⌊(i+1)·n/parts⌋)``; a
    batch of fewer rows than ``parts`` (a short last batch) thus gets one
    part per row: the empty parts are dropped where ``n`` is known when the
    step is traced (JAX, TensorFlow's first trace), and are kept with
    ``n_i / n = 0`` where it is not (a TensorFlow step retraced for a
    ragged last batch), where they add nothing to the loss and the gradient
    (`_accumulate`, `_mean_loss`) and leave the non-trainable state (batch
    normalization's moving statistics) as it was.
    """
    if parts == 1:
        return [((x, y, sample_weight), None)]
    rows = ops.shape(_first_rows(x))[0]
    bounds = [(rows * i) // parts for i in range(parts + 1)]
    pieces = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        if isinstance(lo, int) and isinstance(hi, int) and hi == lo and rows > 0:
            continue  # an empty part of a batch shorter than `parts` (issue 22)
        fraction = ops.cast(hi - lo, "float32") / ops.cast(rows, "float32")
        pieces.append(
            ((_take(x, lo, hi), _take(y, lo, hi), _take(sample_weight, lo, hi)), fraction)
        )
    return pieces


def _weighted(value, fraction):
    """``(n_i / n) · value``, exactly 0 for an empty part (whose loss and gradient are NaN)."""
    fraction = ops.cast(fraction, value.dtype)
    return ops.where(fraction > 0, value * fraction, ops.zeros_like(value))


def _accumulate(total, grads, fraction):
    if fraction is None:  # one part: the gradient itself
        return list(grads)
    weighted = [None if g is None else _weighted(g, fraction) for g in grads]
    if total is None:
        return weighted
    return [
        b if a is None else a if b is None else a + b for a, b in zip(total, weighted, strict=True)
    ]


def _join(parts):
    """The parts' predictions (or losses) back together."""
    values, fractions = zip(*parts, strict=True)
    if fractions[0] is None:
        return values[0]
    return keras.tree.map_structure(lambda *p: ops.concatenate(p, axis=0), *values)


def _mean_loss(losses):
    if losses[0][1] is None:
        return losses[0][0]
    return sum(_weighted(loss, f) for loss, f in losses)


def train_step(model, settings, *args):
    """The sharpness-aware step of ``model`` (a ``TrainingWrapper``): ``(data)`` or ``(state, data)``."""
    if keras.backend.backend() == "jax":
        return _jax_step(model, settings, *args)
    return _tensorflow_step(model, settings, *args)


# -- TensorFlow ------------------------------------------------------------------------


def _tensorflow_step(model, settings, data):
    import tensorflow as tf

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    variables = list(model.trainable_variables)
    state = list(model.non_trainable_variables)
    optimizer = model.optimizer
    total, losses, predictions = None, [], []
    for (xi, yi, wi), fraction in split_batch(x, y, sample_weight, settings.num_batch_splits):
        # A snapshot read before pass 1 writes (convert_to_tensor returns the variable itself).
        start = [tf.identity(s.value) for s in state]
        with tf.GradientTape() as tape:
            pred = model(xi, training=True)
            loss = model.compute_loss(x=xi, y=yi, y_pred=pred, sample_weight=wi, training=True)
            scaled = optimizer.scale_loss(loss)
        if fraction is not None:  # an empty part (see split_batch) leaves the state as it was
            for variable, before in zip(state, start, strict=True):
                variable.assign(ops.where(fraction > 0, variable.value, before))
        grads = tape.gradient(scaled, variables)
        weights = [tf.convert_to_tensor(w.value) for w in variables]  # one read each
        eps = parameter_perturbation(
            variables, grads, weights, settings.rho, settings.adaptive, **settings.scaling()
        )
        perturbed = [w if e is None else w + e for w, e in zip(weights, eps, strict=True)]
        mapping = list(zip(variables, perturbed, strict=True))
        mapping += list(zip(state, start, strict=True))
        with tf.GradientTape() as tape:
            tape.watch(perturbed)
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
                pred_2 = model(xi, training=True)
                loss_2 = model.compute_loss(
                    x=xi, y=yi, y_pred=pred_2, sample_weight=wi, training=True
                )
                scaled_2 = optimizer.scale_loss(loss_2)
        total = _accumulate(total, tape.gradient(scaled_2, perturbed), fraction)
        losses.append((loss, fraction))
        predictions.append((pred, fraction))
    optimizer.apply(total, variables)
    loss = _mean_loss(losses)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:  # compute_loss divided by the replicas; the log shows the replica's loss
        loss = loss * ops.cast(replicas, loss.dtype)
    keras_trainer.loss_tracker(model).update_state(loss, sample_weight=tf.shape(_first_rows(x))[0])
    return model.compute_metrics(x, y, _join(predictions), sample_weight=sample_weight)


# -- JAX ----------------------------------------------------------------------------------


def _jax_step(model, settings, state, data):
    import jax

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    grad_fn = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)
    total, losses, predictions = None, [], []
    for (xi, yi, wi), fraction in split_batch(x, y, sample_weight, settings.num_batch_splits):
        args = (xi, yi, wi)
        kwargs = {"training": True, "optimizer_variables": optimizer_variables}
        (_, aux), grads = grad_fn(trainable, non_trainable, metrics_variables, *args, **kwargs)
        loss, pred, next_non_trainable, next_metrics = aux
        eps = parameter_perturbation(
            model.trainable_variables,
            grads,
            trainable,
            settings.rho,
            settings.adaptive,
            **settings.scaling(),
        )
        perturbed = [w if e is None else w + e for w, e in zip(trainable, eps, strict=True)]
        # From the state before pass 1; what pass 2 would change is dropped.
        _, grads_2 = grad_fn(perturbed, non_trainable, metrics_variables, *args, **kwargs)
        non_trainable, metrics_variables = next_non_trainable, next_metrics
        total = _accumulate(total, grads_2, fraction)
        losses.append((loss, fraction))
        predictions.append((pred, fraction))
    trainable, optimizer_variables = model.optimizer.stateless_apply(
        optimizer_variables, total, trainable
    )
    logs, metrics_variables = _jax_metrics(
        model, metrics_variables, _mean_loss(losses), x, y, _join(predictions), sample_weight
    )
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def _jax_metrics(model, metrics_variables, loss, x, y, y_pred, sample_weight):
    """Update the loss tracker and the compiled metrics statelessly, as Keras's JAX step does."""
    mapping = list(zip(model.metrics_variables, metrics_variables, strict=True))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        keras_trainer.loss_tracker(model).update_state(loss, sample_weight=_first_rows(x).shape[0])
        logs = model.compute_metrics(x, y, y_pred, sample_weight)
    updated = []
    for variable in model.metrics_variables:
        value = scope.get_current_value(variable)
        updated.append(variable.value if value is None else value)
    return logs, updated

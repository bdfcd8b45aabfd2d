"""The one adaptation core that every ``nnkit.meta`` learner runs.

A learner is described to the core by an ``InnerLoop``: the model, the
task loss, whether the inner gradient is stopped (first order), and in which
mode the query pass runs. The learner supplies, per trainable variable of the
model, the inner learning rate (``None``: the variable is not adapted), so
MAML (one rate for all), Meta-SGD (learned rates), ANIL (rates for the head
only) and Reptile (MAML's loop on stopped weights) differ only in what they
pass in and in what they do with what comes out.

For one task, with ``θ`` the weights and ``s`` the non-trainable state::

    θ_0 = θ,  s_0 = s
    θ_{k+1} = θ_k − r ⊙ ∇_θ L_support(θ_k; s_k),   s_{k+1} = state after that pass
    prediction = f(x_query; θ_K, s_K)

``L_support`` is the mean task loss plus the model's own losses
(regularizers) at ``θ_k``. Every support pass runs in training mode (batch
statistics, dropout); the query pass runs in training mode when the learner
is transductive. The tasks of a batch run side by side through
``keras.ops.vectorized_map`` (``tf.vectorized_map`` or ``jax.vmap``), each
from the same ``θ`` and ``s``, except that the random streams (seed-generator
states) of task ``i`` are moved by ``i · SEED_STRIDE`` so tasks draw
different dropout masks.

State written back after a batch (see ``InnerLoop.merge_state``): float
state (batch-norm statistics) is the mean over the tasks (and over the
replicas under ``tf.distribute``); a seed-generator state is task 0's,
without its offset: it has advanced by the draws of one task; any other
state is task 0's.
"""

import keras
from keras import ops

from nnkit._keras import layers as keras_layers
from nnkit.distribute import replicas
from nnkit.meta import _backend

#: Task ``i``'s seed-generator states start ``i · SEED_STRIDE`` away (first component).
SEED_STRIDE = 0x5851F42D


def seed_states(model):
    """``{id(variable)}`` of the seed-generator states (dropout and the like) in ``model``."""
    return {
        id(generator.state)
        for layer in keras_layers.walk(model)
        for generator in keras_layers.seed_generators(layer)
    }


def _seed_offset(index, variable):
    dtype = variable.dtype
    first = ops.cast(index, dtype) * ops.cast(SEED_STRIDE, dtype)
    return ops.stack([first, ops.zeros((), dtype)])


def mean_loss(loss, y_true, y_pred):
    """The task loss as a scalar (a loss function's per-example values averaged)."""
    return ops.mean(loss(y_true, y_pred))


class InnerLoop:
    """How a learner adapts ``model`` to a task; see the module documentation.

    Args:
        model: The built ``keras.Model`` being adapted.
        loss: A callable ``loss(y_true, y_pred)`` (a ``keras.losses.Loss`` or
            a loss function).
        first_order: Whether the inner gradient is treated as a constant by
            the outer gradient.
        query_training: The ``training`` flag of the query pass.
    """

    def __init__(self, model, loss, *, first_order, query_training):
        self.model = model
        self.loss = loss
        self.first_order = first_order
        self.query_training = query_training
        seeds = seed_states(model)
        state = model.non_trainable_variables
        self.is_seed = [id(w) in seeds for w in state]
        self.is_float = [keras.backend.is_float_dtype(w.dtype) for w in state]

    def support_objective(self, params, state, x, y, adapted):
        """``objective(values) -> (L_support, new state)`` of the adapted variables' values."""

        def objective(values):
            full = list(params)
            for index, value in zip(adapted, values, strict=True):
                full[index] = value
            y_pred, new_state, losses = self.model.stateless_call(
                full, state, x, training=True, return_losses=True
            )
            value = mean_loss(self.loss, y, y_pred)
            for extra in losses:
                value = value + ops.cast(ops.sum(extra), value.dtype)
            return value, new_state

        return objective

    def adapt(self, params, state, rates, x, y, steps):
        """``(θ_K, s_K)`` for one task (no task axis): ``steps`` inner steps from ``params``.

        ``rates[i]`` is the rate of trainable variable ``i`` (a number or a
        tensor that broadcasts to its shape), or ``None`` to keep it fixed.
        """
        adapted = [i for i, rate in enumerate(rates) if rate is not None]
        params, state = list(params), list(state)
        for _ in range(steps):
            objective = self.support_objective(params, state, x, y, adapted)
            _, state, grads = _backend.value_and_grad(objective, [params[i] for i in adapted])
            state = list(state)
            for index, grad in zip(adapted, grads, strict=True):
                if self.first_order:
                    grad = ops.stop_gradient(grad)
                params[index] = params[index] - ops.cast(rates[index], grad.dtype) * grad
        return params, state

    def task_state(self, state, index):
        """The state task ``index`` (of the global batch) starts from."""
        return [
            value + _seed_offset(index, w) if seed else value
            for value, seed, w in zip(
                state, self.is_seed, self.model.non_trainable_variables, strict=True
            )
        ]

    def run(self, params, state, rates, inputs, steps):
        """Adapt every task of a batch and predict its query set.

        ``inputs`` is ``(x_support, y_support, x_query)`` with a leading task
        axis. Returns ``(y_pred, adapted, new_states)``: the query
        predictions ``(tasks, queries, ...)``; each task's adapted weights, a
        list aligned with ``params`` holding ``None`` for the variables that
        are not adapted; and each task's final state. Per-task values have a
        leading task axis.
        """
        x_support, y_support, x_query = inputs
        first = replicas.replica_id() * ops.shape(x_support)[0]
        indices = ops.arange(ops.shape(x_support)[0], dtype="int32") + ops.cast(first, "int32")
        adapted = [i for i, rate in enumerate(rates) if rate is not None]

        def one_task(elements):
            x, y, xq, index = elements
            task_params, task_state = self.adapt(
                params, self.task_state(state, index), rates, x, y, steps
            )
            y_pred, task_state = self.model.stateless_call(
                task_params, task_state, xq, training=self.query_training
            )
            # Outputs made inside the map: tf.vectorized_map cannot return a captured
            # eager tensor (a state the task left unchanged).
            return y_pred, [task_params[i] for i in adapted], [ops.copy(s) for s in task_state]

        y_pred, per_task, new_states = ops.vectorized_map(
            one_task, (x_support, y_support, x_query, indices)
        )
        stacked = [None] * len(params)
        for index, value in zip(adapted, per_task, strict=True):
            stacked[index] = value
        return y_pred, stacked, list(new_states)

    def merge_state(self, new_states):
        """The state to write back after a batch, from each task's (leading task axis)."""
        merged = []
        for stacked, seed, is_float, w in zip(
            new_states,
            self.is_seed,
            self.is_float,
            self.model.non_trainable_variables,
            strict=True,
        ):
            if seed:
                first = replicas.replica_id() * ops.shape(stacked)[0]
                merged.append(stacked[0] - _seed_offset(first, w))
            elif is_float:
                merged.append(ops.mean(stacked, axis=0))
            else:
                merged.append(stacked[0])
        floats = [i for i, is_float in enumerate(self.is_float) if is_float and not self.is_seed[i]]
        averaged = replicas.mean_over_replicas([merged[i] for i in floats])
        for index, value in zip(floats, averaged, strict=True):
            merged[index] = value
        return merged

"""SGD and Adam whose momentum (``β₁``) may follow a schedule of the step, in-graph.

Keras's ``SGD`` rejects anything but a float ``momentum`` and its ``Adam``
reads ``beta_1`` as a float in ``update_step``, so one-cycle's inverse
momentum cycle (``OneCycleMomentum``) cannot be given to them. These two
optimizers compute the same updates as Keras's, with ``momentum`` /
``beta_1`` either a float or any ``LearningRateSchedule`` evaluated at
``iterations`` inside the compiled step (no callback, no per-batch Python);
the schedule is saved in the optimizer's config and the step counter in its
variables, so a resumed run continues the cycle where it stopped.

What it does not do: Keras's ``use_ema`` and the other base options work as
for any Keras optimizer, but ``momentum`` in SGD is the "heavy ball" form
(Keras's and PyTorch's), and Adam's bias correction uses the current
``β₁`` to the power of the step, as Keras and PyTorch do when ``β₁``
changes.
"""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit._keras import optimizer as keras_optimizer
from nnkit.optimizers._base import state_name
from nnkit.schedules.base import evaluate

_SCHEDULE = keras.optimizers.schedules.LearningRateSchedule


def _check_momentum(name, value):
    """A float in ``[0, 1)`` or a ``LearningRateSchedule`` (or its serialized config)."""
    if isinstance(value, dict):
        try:
            value = keras.optimizers.schedules.deserialize(value)
        except (TypeError, ValueError, KeyError) as error:
            raise TypeError(
                f"`{name}` must be a number in [0, 1) or a LearningRateSchedule. "
                f"Received: {name}={value!r}"
            ) from error
    if isinstance(value, _SCHEDULE):
        return value
    if callable(value):
        raise TypeError(
            f"`{name}` must be a number in [0, 1) or a LearningRateSchedule (a saveable "
            f"schedule, e.g. nnkit.schedules.OneCycleMomentum), not a plain callable. "
            f"Received: {name}={value!r}"
        )
    return v.check_number(name, value, minimum=0.0, maximum=1.0, max_inclusive=False)


def _serialize(value):
    if isinstance(value, _SCHEDULE):
        return keras.optimizers.schedules.serialize(value)
    return value


def _slots(optimizer, variables, what):
    """One zero slot per variable, of its shape and dtype; under ``tf.distribute`` written only
    in the update of each replica's copy, from the all-reduced gradients (every replica then
    holds the same value), as nnkit's other optimizers' state."""
    return [
        optimizer.add_variable(
            shape=tuple(x.shape), initializer="zeros", dtype=x.dtype,
            aggregation="only_first_replica", name=f"nnkit_optimizer_{state_name(x)}_{what}",
        )
        for x in variables
    ]  # fmt: skip


def _at(value, step):
    """``value`` at ``step`` as a float32 tensor."""
    if isinstance(value, _SCHEDULE):
        return evaluate(value, ops.cast(step, "float32"))
    return ops.convert_to_tensor(value, "float32")


@keras.saving.register_keras_serializable(package="nnkit")
class SGD(keras.optimizers.Optimizer):
    """Keras's SGD with momentum, where ``momentum`` may be a schedule of the step.

    Use it for one-cycle training with SGD: ``learning_rate=OneCycle(...)``
    and ``momentum=OneCycleMomentum(...)`` with the same ``total_steps``.
    With a float momentum it is Keras's ``SGD`` update for update.

    Formula, with ``μ_t = momentum(t)`` at ``t = iterations`` (0 at the
    first update), the same step the rate is read at (under gradient
    accumulation both read Keras's micro-batch counter)::

        m_t = μ_t · m_(t−1) − η_t · g_t
        w_t = w_(t−1) + m_t                         nesterov=False
        w_t = w_(t−1) + μ_t · m_t − η_t · g_t       nesterov=True

    Args:
        learning_rate: A float, a ``LearningRateSchedule`` or a callable, as
            for any Keras optimizer. Defaults to ``0.01``.
        momentum: ``μ``, a float in ``[0, 1)`` or a ``LearningRateSchedule``
            giving ``μ_t`` (e.g. ``nnkit.schedules.OneCycleMomentum``).
            Defaults to ``0.0``.
        nesterov: Nesterov momentum. Defaults to ``False``.
        **kwargs: Keras's optimizer options (``weight_decay``, ``clipnorm``,
            ``global_clipnorm``, ``use_ema``, ``name``, ...). Defaults to
            Keras's.

    Raises:
        TypeError: If ``momentum`` is neither a number nor a schedule, or
            ``nesterov`` is not a bool.
        ValueError: If a float ``momentum`` is outside ``[0, 1)``.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.optimizers import SGD
    >>> from nnkit.schedules import OneCycle, OneCycleMomentum
    >>> optimizer = SGD(OneCycle(0.1, total_steps=100),
    ...                 momentum=OneCycleMomentum(total_steps=100))
    >>> [round(float(optimizer.momentum_at(t)), 3) for t in (0, 29, 99)]
    [0.95, 0.85, 0.95]
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer, loss="mse")
    >>> _ = model.fit(np.ones((8, 2)), np.ones((8, 1)), epochs=1, verbose=0)

    References:
        Polyak, "Some methods of speeding up the convergence of iteration
        methods", 1964; Smith, "A disciplined approach to neural network
        hyper-parameters: Part 1", 2018.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        kwargs.setdefault("name", "SGD")
        super().__init__(learning_rate=v.check_learning_rate(learning_rate), **kwargs)
        self.momentum = _check_momentum("momentum", momentum)
        self.nesterov = v.check_bool("nesterov", nesterov)

    def _uses_momentum(self):
        return isinstance(self.momentum, _SCHEDULE) or self.momentum != 0

    def momentum_at(self, step):
        """``μ`` at optimizer step ``step`` (a float32 tensor)."""
        return _at(self.momentum, step)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self._uses_momentum():
            self.momentums = _slots(self, variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if not self.momentums:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        mu = ops.cast(self.momentum_at(_schedule_clock(self)), variable.dtype)
        m = self.momentums[keras_optimizer.variable_index(self, variable)]
        step = ops.multiply(gradient, learning_rate)
        self.assign(m, ops.subtract(ops.multiply(m, mu), step))
        if self.nesterov:
            self.assign_add(variable, ops.subtract(ops.multiply(m, mu), step))
        else:
            self.assign_add(variable, m)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=_serialize(self.momentum), nesterov=self.nesterov)
        return config


@keras.saving.register_keras_serializable(package="nnkit")
class Adam(keras.optimizers.Optimizer):
    """Keras's Adam (AdamW with ``weight_decay``), where ``beta_1`` may be a schedule.

    Use it for one-cycle training with Adam: ``beta_1=OneCycleMomentum(...)``
    cycles ``β₁`` inversely to a ``OneCycle`` rate, as fastai and PyTorch
    do. With a float ``beta_1`` it is Keras's ``Adam`` update for update;
    with ``weight_decay`` set, Keras's decoupled decay makes it AdamW.

    Formula, with ``β₁ = beta_1(t)`` at ``t = iterations`` and ``k = t + 1``
    (under gradient accumulation ``β₁`` is read at the rate's micro-batch
    counter, ``k`` still counts updates)::

        m_k = m_(k−1) + (1 − β₁)(g_k − m_(k−1))
        v_k = v_(k−1) + (1 − β₂)(g_k² − v_(k−1))
        w_k = w_(k−1) − η_t · √(1 − β₂^k) / (1 − β₁^k) · m_k / (√v_k + ε)

    (with ``amsgrad``, ``v_k`` is replaced by its running maximum).

    Args:
        learning_rate: As for any Keras optimizer. Defaults to ``0.001``.
        beta_1: ``β₁``, a float in ``[0, 1)`` or a ``LearningRateSchedule``.
            Defaults to ``0.9``.
        beta_2: ``β₂`` in ``[0, 1)``. Defaults to ``0.999``.
        epsilon: ``ε > 0``. Defaults to ``1e-7``.
        amsgrad: Use AMSGrad's running maximum of ``v``. Defaults to
            ``False``.
        **kwargs: Keras's optimizer options (``weight_decay``, ``clipnorm``,
            ``use_ema``, ``name``, ...). Defaults to Keras's.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``beta_2`` or a float ``beta_1`` is outside ``[0, 1)``,
            or ``epsilon <= 0``.

    Example:
    >>> from nnkit.optimizers import Adam
    >>> from nnkit.schedules import OneCycle, OneCycleMomentum
    >>> optimizer = Adam(OneCycle(1e-2, total_steps=50),
    ...                  beta_1=OneCycleMomentum(50, base_momentum=0.85, max_momentum=0.95))
    >>> round(float(optimizer.beta_1_at(14)), 3)
    0.85

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015;
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """

    def __init__(
        self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, **kwargs
    ):
        kwargs.setdefault("name", "Adam")
        super().__init__(learning_rate=v.check_learning_rate(learning_rate), **kwargs)
        self.beta_1 = _check_momentum("beta_1", beta_1)
        self.beta_2 = v.check_number("beta_2", beta_2, minimum=0.0, maximum=1.0,
                                     max_inclusive=False)  # fmt: skip
        self.epsilon = v.check_positive_number("epsilon", epsilon)
        self.amsgrad = v.check_bool("amsgrad", amsgrad)

    def beta_1_at(self, step):
        """``β₁`` at optimizer step ``step`` (a float32 tensor)."""
        return _at(self.beta_1, step)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = _slots(self, variables, "momentum")
        self.velocities = _slots(self, variables, "velocity")
        self.velocity_hats = _slots(self, variables, "velocity_hat") if self.amsgrad else []

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        k = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1_at(_schedule_clock(self)), dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        index = keras_optimizer.variable_index(self, variable)
        m, vel = self.momentums[index], self.velocities[index]
        alpha = lr * ops.sqrt(1 - ops.power(beta_2, k)) / (1 - ops.power(beta_1, k))
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(vel, ops.multiply(ops.subtract(ops.square(gradient), vel), 1 - beta_2))
        if self.amsgrad:
            hat = self.velocity_hats[index]
            self.assign(hat, ops.maximum(hat, vel))
            vel = hat
        self.assign_sub(
            variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(vel), self.epsilon))
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            beta_1=_serialize(self.beta_1),
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            amsgrad=self.amsgrad,
        )
        return config


def _schedule_clock(optimizer):
    """The step a momentum schedule is read at: the learning rate's clock.

    Keras evaluates a learning-rate schedule at its raw counter, which under
    ``gradient_accumulation_steps = N`` counts micro-batches (update ``j`` is
    applied at micro-batch ``j·N + N − 1``), while ``iterations`` counts
    updates. The momentum schedule reads the same clock as the rate, so that
    one-cycle's two halves stay in phase under accumulation.
    """
    steps = optimizer.gradient_accumulation_steps
    if not steps:
        return optimizer.iterations
    return optimizer.iterations * steps + (steps - 1)

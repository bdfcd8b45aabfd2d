"""Shampoo: Kronecker-factored preconditioning with a first-order graft for the step size."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit._deprecation import renamed
from nnkit.optimizers import _kronecker as kron
from nnkit.optimizers import _state_layout
from nnkit.optimizers._base import check_beta, state_name
from nnkit.optimizers._factored import FactoredOptimizer, frobenius

GRAFTS = ("adam", "rmsprop", "sgd")


class _Moments:
    """The graft's state of one variable: first moment ``m`` and second moment ``v`` (or None)."""

    def __init__(self, first, second):
        self.first = first
        self.second = second


@keras.saving.register_keras_serializable(package="nnkit")
class Shampoo(FactoredOptimizer):
    """Shampoo: precondition each matrix by ``L^(−1/4) G R^(−1/4)``, step size from a graft.

    Use it where Adam trains slowly because the loss is badly conditioned
    *across* the entries of a weight matrix (deep autoencoders, deep
    ``tanh``/sigmoid networks, large-batch training): Shampoo approximates
    full-matrix AdaGrad by a Kronecker product of two small factors per
    weight matrix, at a cost per step of a few matrix products per layer
    and, every ``refresh_every`` steps, one eigendecomposition per
    factor. The *graft* (Adam by default) sets the size of every step, so
    Adam's learning rates carry over. 0-D and 1-D variables (biases,
    normalization scales), and variables none of whose sides is
    preconditioned, follow the graft alone.

    Formula, at step ``t`` for a variable seen as the matrix ``G`` of its
    gradient (``(d_1⋯d_{k−1}) × d_k``, blocks of at most
    ``max_preconditioner_dim`` per side, each block on its own)::

        m ← β₁·m + (1 − β₁)·g            m̂ = m / (1 − β₁ᵗ)
        v ← β₂·v + (1 − β₂)·g²                     (adam, rmsprop)
        D = m̂ · √(1 − β₂ᵗ) / (√v + ε)              graft "adam" (Keras's Adam)
          = m̂ / √(v + ε)                           graft "rmsprop" (Keras's RMSprop)
          = m̂                                      graft "sgd"
        L ← β·L + G Gᵀ,  R ← β·R + Gᵀ G            at t = 1, 1 + s, 1 + 2s, …
        L⁻ = (L + ε_d·λ_max(L)·I)^(−e),  R⁻ likewise   at t = t₀, t₀ + f, t₀ + 2f, …
        P = L⁻ M̂ R⁻                                 (M̂ the matrix of m̂)
        w ← w − η · (‖D‖ / ‖P‖) · P                  for t ≥ t₀, per block
        w ← w − η · D                                for t < t₀ and without a layout

    with ``s = sample_every``, ``f = refresh_every``, ``t₀ =
    start_preconditioning_step``, ``β = statistics_decay`` (1: a plain sum
    ``L = Σ G Gᵀ``), ``ε_d = relative_damping`` and ``e = exponent`` (default
    ``1/(2k)`` for ``k`` preconditioned sides: ``−1/4`` for a matrix). A side
    of length 1 is never preconditioned; with ``blocking=False`` a side
    longer than ``max_preconditioner_dim`` is not either (identity factor).
    Before ``t₀`` (or with ``t₀`` beyond the run) the update is exactly the
    graft's: Keras's ``Adam`` for ``"adam"``, and with ``beta_1=0`` Keras's
    ``RMSprop`` (``rho=beta_2``) for ``"rmsprop"`` and ``SGD`` for ``"sgd"``.
    Statistics and factors are float32 whatever the variables' dtype. The
    roots are recomputed in a value-returning ``ops.cond`` and assigned
    unconditionally (no write inside a branch), so the step compiles on
    TensorFlow (``jit_compile`` or not, under ``tf.distribute``) and JAX.

    Args:
        learning_rate: A float, a ``keras.optimizers.schedules.LearningRateSchedule``
            (any nnkit schedule) or a callable. Defaults to ``0.001``.
        graft: The first-order rule that sets the step size: ``"adam"``,
            ``"rmsprop"`` or ``"sgd"``. Keyword-only. Defaults to ``"adam"``.
        beta_1: Decay of the first moment ``m``, in ``[0, 1)``. Defaults to ``0.9``.
        beta_2: Decay of the graft's second moment ``v``, in ``[0, 1)``.
            Defaults to ``0.999``.
        epsilon: The graft's ``ε``, ``> 0``. Defaults to ``1e-7``.
        statistics_decay: ``β`` of the factor statistics, in ``[0, 1]``.
            Defaults to ``1.0`` (a sum).
        relative_damping: ``ε_d``, relative to the largest eigenvalue of each
            factor, ``> 0`` (formerly ``damping``, which still works for one
            release with a ``DeprecationWarning``; KFAC's ``damping`` is
            absolute). Defaults to ``1e-6``.
        exponent: ``e`` in ``(0, 1]``, or ``None`` for ``1/(2k)``. Defaults to ``None``.
        sample_every: ``s``, an int ``>= 1`` (formerly ``statistics_every``).
            Defaults to ``1``.
        refresh_every: ``f``, an int ``>= 1`` (formerly ``precondition_every``).
            Defaults to ``20``.
        start_preconditioning_step: ``t₀``, an int ``>= 1``. Defaults to ``20``.
        max_preconditioner_dim: Longest preconditioned side (block length),
            an int ``>= 1``. Defaults to ``1024``.
        blocking: Cut longer sides into blocks (``True``) or leave them
            unpreconditioned (``False``). Defaults to ``True``.
        weight_decay: Decoupled weight decay (Keras's: ``w ← w − η·λ·w``
            before the update), ``>= 0`` or ``None``. Defaults to ``None``.
        **kwargs: Keras's other optimizer arguments (``clipnorm``,
            ``global_clipnorm``, ``clipvalue``, ``use_ema``,
            ``gradient_accumulation_steps``, ``loss_scale_factor``, ``name``, …);
            and, for one release with a ``DeprecationWarning``, the old names
            ``statistics_every``, ``precondition_every`` and ``damping`` (see ``docs/naming.md``).

    Raises:
        TypeError: If an argument has the wrong type (bools are not numbers).
        ValueError: If an argument is out of range, NaN or inf, or ``graft``
            is unknown.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.optimizers import Shampoo
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> optimizer = Shampoo(0.01, refresh_every=2, start_preconditioning_step=2)
    >>> model.compile(optimizer, loss="mse")
    >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    >>> history = model.fit(x, x[:, :3], batch_size=8, epochs=2, verbose=0)
    >>> int(optimizer.iterations.numpy())
    4
    >>> Shampoo.from_config(optimizer.get_config()).graft
    'adam'

    References:
        Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor
        Optimization", ICML 2018. Anil et al., "Scalable Second Order
        Optimization for Deep Learning", 2020 (grafting, blocking, damping
        relative to the largest eigenvalue). Shi et al., "A Distributed
        Data-Parallel PyTorch Implementation of the Distributed Shampoo
        Optimizer", 2023.
    """

    def __init__(
        self,
        learning_rate=0.001,
        *,
        graft="adam",
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        statistics_decay=1.0,
        relative_damping=1e-6,
        exponent=None,
        sample_every=1,
        refresh_every=20,
        start_preconditioning_step=20,
        max_preconditioner_dim=1024,
        blocking=True,
        weight_decay=None,
        **kwargs,
    ):
        relative_damping = renamed(kwargs, "damping", "relative_damping", relative_damping,
                                   1e-6, owner="Shampoo")  # fmt: skip
        super().__init__(
            learning_rate,
            statistics_decay=statistics_decay,
            sample_every=sample_every,
            refresh_every=refresh_every,
            start_preconditioning_step=start_preconditioning_step,
            max_preconditioner_dim=max_preconditioner_dim,
            blocking=blocking,
            weight_decay=weight_decay,
            **kwargs,
        )
        self.graft = v.check_one_of("graft", graft, GRAFTS)
        self.beta_1 = check_beta("beta_1", beta_1)
        self.beta_2 = check_beta("beta_2", beta_2)
        self.epsilon = v.check_positive_number("epsilon", epsilon)
        self.relative_damping = v.check_positive_number("relative_damping", relative_damping)
        self.exponent = v.check_optional_number(
            "exponent", exponent, minimum=0.0, min_inclusive=False, maximum=1.0
        )

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._moments, self._roots = [], []
        for variable, factors in zip(var_list, self._factors, strict=True):
            name = state_name(variable)
            layout = _state_layout.weight_layout(variable)
            first = self.add_state(f"{name}_momentum", variable.shape, layout=layout)
            second = None
            if self.graft != "sgd":
                second = self.add_state(f"{name}_velocity", variable.shape, layout=layout)
            self._moments.append(_Moments(first, second))
            roots = None
            if factors is not None:
                roots = {}
                for side in ("left", "right"):
                    for key, statistic in getattr(factors, side).items():
                        roots[side, key] = self.add_state(
                            f"{name}_{side}_root_{key[0]}_{key[1]}",
                            statistic.shape,
                            initializer="identity",
                            layout=_state_layout.factor_layout(variable, side, statistic.shape[0]),
                        )
            self._roots.append(roots)

    def _graft_direction(self, gradient, moments, step):
        """Update the moments; return ``(D, m̂)``."""
        t = ops.cast(step, "float32")
        bias_1 = 1.0 - ops.power(self.beta_1, t)
        first = moments.first.value + (gradient - moments.first.value) * (1.0 - self.beta_1)
        self.assign(moments.first, first)
        first_hat = first / bias_1
        if self.graft == "sgd":
            return first_hat, first_hat
        if self.graft == "adam":
            second = moments.second.value + (ops.square(gradient) - moments.second.value) * (
                1.0 - self.beta_2
            )
            self.assign(moments.second, second)
            scale = ops.sqrt(1.0 - ops.power(self.beta_2, t)) / bias_1
            return first * scale / (ops.sqrt(second) + self.epsilon), first_hat
        second = self.beta_2 * moments.second.value + (1.0 - self.beta_2) * ops.square(gradient)
        self.assign(moments.second, second)
        return first_hat / ops.sqrt(second + self.epsilon), first_hat

    def update_step(self, gradient, variable, learning_rate):
        index = self.index_of(variable)
        step = self.current_step()
        gradient = ops.cast(gradient, "float32")
        direction, first_hat = self._graft_direction(gradient, self._moments[index], step)
        factors = self._factors[index]
        if factors is not None:
            direction = self._preconditioned(
                factors, self._roots[index], gradient, first_hat, direction, step
            )
        lr = ops.cast(learning_rate, "float32")
        self.assign_sub(variable, ops.cast(lr * direction, variable.dtype))

    def _preconditioned(self, factors, roots, gradient, first_hat, direction, step):
        plan = factors.plan
        exponent = self.exponent if self.exponent is not None else 1.0 / (2 * plan.sides)
        left, right = self.updated_statistics(factors, kron.split(gradient, plan), step)
        keys = sorted(roots)
        current = tuple(roots[key].value for key in keys)

        def recomputed():
            statistics = {**{("left", k): s for k, s in left.items()}}
            statistics.update({("right", k): s for k, s in right.items()})
            return tuple(
                kron.inverse_root(statistics[key], exponent, self.relative_damping) for key in keys
            )

        new = self.periodic(self.refresh_due(step), recomputed, lambda: current, refresh=True)
        for key, value in zip(keys, new, strict=True):
            self.assign(roots[key], value)
        root = dict(zip(keys, new, strict=True))
        moments = kron.split(first_hat, plan)
        graft = kron.split(direction, plan)

        def grafted():
            blocks = {}
            for key in plan.blocks:
                p = moments[key]
                if plan.left:
                    p = ops.matmul(root["left", key], p)
                if plan.right:
                    p = ops.matmul(p, root["right", key])
                norm = frobenius(p)
                ratio = ops.where(norm > 0, frobenius(graft[key]) / ops.maximum(norm, 1e-30), 0.0)
                blocks[key] = p * ratio
            return kron.merge(blocks, plan)

        return ops.cond(self.preconditioning(step), grafted, lambda: direction)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "graft": self.graft,
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "relative_damping": self.relative_damping,
                "exponent": self.exponent,
            }
        )
        return config

"""SOAP: Adam run in the eigenbasis of Shampoo's factors."""

import keras
from keras import ops

from nnkit import _validation as v
from nnkit.optimizers import _kronecker as kron
from nnkit.optimizers import _state_layout
from nnkit.optimizers._base import check_beta, state_name
from nnkit.optimizers._factored import FactoredOptimizer


class _State:
    """SOAP's state of one variable: moments and, with a layout, the bases per block and side."""

    def __init__(self, first, second, bases):
        self.first = first  # m, in the variable's own coordinates
        self.second = second  # v, in the rotated coordinates of each block
        self.bases = bases  # {(side, block): variable} or None


@keras.saving.register_keras_serializable(package="nnkit")
class SOAP(FactoredOptimizer):
    """SOAP: AdamW in the eigenbasis of Shampoo's Kronecker factors, refreshed every few steps.

    Use it where you would use AdamW on a model with dense or convolutional
    weight matrices and want fewer steps: SOAP rotates each matrix's
    gradient into the eigenbasis of Shampoo's factors ``L`` and ``R``,
    runs Adam there (where the curvature is closer to diagonal, so Adam's
    per-coordinate scaling fits better), and rotates the step back. It
    costs a few matrix products per matrix and step, and one power
    iteration with a QR decomposition per factor every
    ``refresh_every`` steps (an eigendecomposition only the first
    time). 0-D and 1-D variables, and variables none of whose sides is
    preconditioned, follow AdamW.

    Formula, at step ``t`` for a variable seen as the matrix ``G`` of its
    gradient (blocks of at most ``max_preconditioner_dim`` per side, each
    block on its own; ``Q_L = I`` for an unpreconditioned side)::

        L ← β·L + G Gᵀ,  R ← β·R + Gᵀ G          at t = 1, 1 + s, 1 + 2s, …
        m ← β₁·m + (1 − β₁)·G                      (in the variable's coordinates)
        G' = Q_Lᵀ G Q_R,   M' = Q_Lᵀ m Q_R
        V ← β₂·V + (1 − β₂)·G'²                    (in the rotated coordinates)
        N = Q_L [ M' · √(1 − β₂ᵏ) / ((1 − β₁ᵏ)(√V + ε)) ] Q_Rᵀ
        w ← w − η·λ·w − η·N
      then, for the next step:
        Q_L, Q_R ← eigenvectors of L, R,  m, V ← 0  at t = t₀
        Q ← qr(S · Q[:, π]),  V ← V[π]              at t = t₀ + f, t₀ + 2f, …
                                                  (π sorts diag(Qᵀ S Q) descending)

    with ``s = sample_every``, ``f = refresh_every``, ``t₀ =
    start_preconditioning_step``, ``β = statistics_decay``, ``λ =
    weight_decay`` and ``k`` the steps since the moments were last reset
    (``t − t₀`` after ``t₀``, ``t`` until then): Adam restarts in the first
    basis (its moments in the identity basis do not carry over), and only
    permutes ``V`` at later refreshes, which move the basis little. Eigenvectors are sorted by descending
    eigenvalue with each one's largest entry positive, and ``qr`` returns
    ``R`` with a non-negative diagonal, so replicas and backends agree. Before
    ``t₀`` (``Q = I``), or with ``t₀`` beyond the run, SOAP is exactly Keras's
    ``AdamW`` with the same ``beta_1``, ``beta_2``, ``epsilon`` and
    ``weight_decay``. As in the reference implementation, a basis never
    rotates the gradient it was computed from (a basis fitted to one gradient
    makes it diagonal, and Adam would blow the rounding noise off the
    diagonal up to full-size steps); unlike it, step ``t₀`` is not skipped but
    taken by AdamW. Statistics and bases are float32 whatever the variables'
    dtype; the refresh is a value-returning ``ops.cond`` followed by
    unconditional assignments.

    Args:
        learning_rate: A float, a ``keras.optimizers.schedules.LearningRateSchedule``
            (any nnkit schedule) or a callable. Defaults to ``0.003``.
        beta_1: Decay of the first moment, in ``[0, 1)``. Keyword-only.
            Defaults to ``0.95``.
        beta_2: Decay of the second moment, in ``[0, 1)``. Defaults to ``0.95``.
        epsilon: Adam's ``ε``, ``> 0``. Defaults to ``1e-8``.
        statistics_decay: ``β`` of the factor statistics, in ``[0, 1]``.
            Defaults to ``0.95``.
        sample_every: ``s``, an int ``>= 1`` (formerly ``statistics_every``).
            Defaults to ``1``.
        refresh_every: ``f``, an int ``>= 1`` (formerly ``precondition_every``).
            Defaults to ``10``.
        start_preconditioning_step: ``t₀``, an int ``>= 1``. Defaults to ``1``.
        max_preconditioner_dim: Longest preconditioned side (block length),
            an int ``>= 1``. Defaults to ``1024``.
        blocking: Cut longer sides into blocks (``True``) or leave them
            unpreconditioned (``False``). Defaults to ``True``.
        weight_decay: Decoupled weight decay ``λ``, ``>= 0`` or ``None``.
            Defaults to ``0.01``.
        **kwargs: Keras's other optimizer arguments (``clipnorm``,
            ``global_clipnorm``, ``clipvalue``, ``use_ema``,
            ``gradient_accumulation_steps``, ``loss_scale_factor``, ``name``, …);
            and, for one release with a ``DeprecationWarning``, the old names
            ``statistics_every`` and ``precondition_every`` (see ``docs/naming.md``).

    Raises:
        TypeError: If an argument has the wrong type (bools are not numbers).
        ValueError: If an argument is out of range, NaN or inf.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.optimizers import SOAP
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> optimizer = SOAP(0.01, refresh_every=2)
    >>> model.compile(optimizer, loss="mse")
    >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    >>> history = model.fit(x, x[:, :3], batch_size=8, epochs=2, verbose=0)
    >>> int(optimizer.iterations.numpy())
    4
    >>> SOAP.from_config(optimizer.get_config()).refresh_every
    2

    References:
        Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam",
        ICLR 2025 (arXiv:2409.11321). Loshchilov & Hutter, "Decoupled
        Weight Decay Regularization", ICLR 2019.
    """

    def __init__(
        self,
        learning_rate=0.003,
        *,
        beta_1=0.95,
        beta_2=0.95,
        epsilon=1e-8,
        statistics_decay=0.95,
        sample_every=1,
        refresh_every=10,
        start_preconditioning_step=1,
        max_preconditioner_dim=1024,
        blocking=True,
        weight_decay=0.01,
        **kwargs,
    ):
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
        self.beta_1 = check_beta("beta_1", beta_1)
        self.beta_2 = check_beta("beta_2", beta_2)
        self.epsilon = v.check_positive_number("epsilon", epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._states = []
        for variable, factors in zip(var_list, self._factors, strict=True):
            name = state_name(variable)
            layout = _state_layout.weight_layout(variable)
            first = self.add_state(f"{name}_momentum", variable.shape, layout=layout)
            second = self.add_state(f"{name}_velocity", variable.shape, layout=layout)
            bases = None
            if factors is not None:
                bases = {}
                for side in ("left", "right"):
                    for key, statistic in getattr(factors, side).items():
                        bases[side, key] = self.add_state(
                            f"{name}_{side}_basis_{key[0]}_{key[1]}",
                            statistic.shape,
                            initializer="identity",
                            layout=_state_layout.factor_layout(variable, side, statistic.shape[0]),
                        )
            self._states.append(_State(first, second, bases))

    def update_step(self, gradient, variable, learning_rate):
        index = self.index_of(variable)
        state, factors = self._states[index], self._factors[index]
        step = self.current_step()
        gradient = ops.cast(gradient, "float32")
        first = state.first.value + (gradient - state.first.value) * (1.0 - self.beta_1)
        if factors is None:
            second = state.second.value + (ops.square(gradient) - state.second.value) * (
                1.0 - self.beta_2
            )
            direction = first * self._bias_scale(step) / (ops.sqrt(second) + self.epsilon)
        else:
            direction, first, second = self._rotated_adam(factors, state, gradient, first, step)
        self.assign(state.first, first)
        self.assign(state.second, second)
        lr = ops.cast(learning_rate, "float32")
        self.assign_sub(variable, ops.cast(lr * direction, variable.dtype))

    def _bias_scale(self, k):
        """Keras's Adam bias correction ``√(1 − β₂ᵏ) / (1 − β₁ᵏ)`` after ``k`` moment updates."""
        k = ops.cast(k, "float32")
        return ops.sqrt(1.0 - ops.power(self.beta_2, k)) / (1.0 - ops.power(self.beta_1, k))

    def _rotated_adam(self, factors, state, gradient, first, step):
        """Adam in the current bases, then any refresh due at ``step`` (for the next step).

        Returns the direction and the moments ``(m, V)`` to store.
        """
        plan = factors.plan
        gradients = kron.split(gradient, plan)
        left, right = self.updated_statistics(factors, gradients, step)
        keys = sorted(state.bases)
        bases = {key: state.bases[key].value for key in keys}
        start = self.start_preconditioning_step
        scale = self._bias_scale(ops.where(step > start, step - start, step))

        def rotate(block, key, back=False):
            if plan.left:
                q = bases["left", key]
                block = ops.matmul(q if back else ops.transpose(q), block)
            if plan.right:
                q = bases["right", key]
                block = ops.matmul(block, ops.transpose(q) if back else q)
            return block

        firsts, seconds = kron.split(first, plan), kron.split(state.second.value, plan)
        directions, moments = {}, []
        for key in plan.blocks:
            rotated = rotate(gradients[key], key)
            moment = seconds[key] + (ops.square(rotated) - seconds[key]) * (1.0 - self.beta_2)
            adam = rotate(firsts[key], key) * scale / (ops.sqrt(moment) + self.epsilon)
            directions[key] = rotate(adam, key, back=True)
            moments.append(moment)
        statistics = {("left", k): s for k, s in left.items()}
        statistics.update({("right", k): s for k, s in right.items()})
        current = (tuple(bases[key] for key in keys), tuple(moments), first)

        def initial():
            new = tuple(kron.initial_basis(statistics[key]) for key in keys)
            return new, tuple(ops.zeros_like(moment) for moment in moments), ops.zeros_like(first)

        def refreshed():
            new, orders = [], {}
            for key, basis in zip(keys, current[0], strict=True):
                basis, orders[key] = kron.refreshed_basis(statistics[key], basis)
                new.append(basis)
            permuted = []
            for block, moment in zip(plan.blocks, moments, strict=True):
                if plan.left:
                    moment = ops.take(moment, orders["left", block], axis=0)
                if plan.right:
                    moment = ops.take(moment, orders["right", block], axis=1)
                permuted.append(moment)
            return tuple(new), tuple(permuted), first

        def recomputed():
            return ops.cond(ops.equal(step, start), initial, refreshed)

        new_bases, new_moments, new_first = self.periodic(
            self.refresh_due(step), recomputed, lambda: current, refresh=True
        )
        for key, value in zip(keys, new_bases, strict=True):
            self.assign(state.bases[key], value)
        second = kron.merge(dict(zip(plan.blocks, new_moments, strict=True)), plan)
        return kron.merge(directions, plan), new_first, second

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config

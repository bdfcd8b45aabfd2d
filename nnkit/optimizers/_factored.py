"""The base of ``Shampoo`` and ``SOAP``: Kronecker-factor statistics per variable, on a cadence.

It owns the settings both share (statistics decay and cadence, refresh
cadence, start, blocking), makes the factor statistics ``L`` and ``R`` of
every block of every preconditioned variable (``nnkit.optimizers._kronecker``
decides the layout) and updates them every ``sample_every`` steps. The
subclass adds what it derives from the statistics (Shampoo: inverse roots;
SOAP: eigenbases) and the update rule.
"""

import inspect

from keras import ops

from nnkit import _validation as v
from nnkit._deprecation import renamed
from nnkit.optimizers import _kronecker as kron
from nnkit.optimizers import _state_layout
from nnkit.optimizers._base import SecondOrderOptimizer, every, state_name


class Factors:
    """The factor statistics of one variable: ``left[i, j]`` and ``right[i, j]`` per block."""

    def __init__(self, plan, left, right):
        self.plan = plan
        # {(i, j): variable}: rows × rows (left) and cols × cols (right); empty for a
        # side that is not preconditioned.
        self.left = left
        self.right = right


class FactoredOptimizer(SecondOrderOptimizer):
    """Kronecker-factor statistics of every variable with a layout, updated on a cadence."""

    def __init__(
        self,
        learning_rate,
        *,
        statistics_decay,
        sample_every,
        refresh_every,
        start_preconditioning_step,
        max_preconditioner_dim,
        blocking,
        weight_decay,
        **kwargs,
    ):
        # The names before this release (one release, with a DeprecationWarning).
        owner, defaults = type(self).__name__, _defaults(type(self))
        sample_every = renamed(kwargs, "statistics_every", "sample_every", sample_every,
                               defaults["sample_every"], owner=owner, stacklevel=4)  # fmt: skip
        refresh_every = renamed(kwargs, "precondition_every", "refresh_every", refresh_every,
                                defaults["refresh_every"], owner=owner, stacklevel=4)  # fmt: skip
        super().__init__(learning_rate, weight_decay=weight_decay, **kwargs)
        self.statistics_decay = v.check_number(
            "statistics_decay", statistics_decay, minimum=0.0, maximum=1.0
        )
        self.sample_every = v.check_positive_int("sample_every", sample_every)
        self.refresh_every = v.check_positive_int("refresh_every", refresh_every)
        self.start_preconditioning_step = v.check_positive_int(
            "start_preconditioning_step", start_preconditioning_step
        )
        self.max_preconditioner_dim = v.check_positive_int(
            "max_preconditioner_dim", max_preconditioner_dim
        )
        self.blocking = v.check_bool("blocking", blocking)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._factors = []
        for variable in var_list:
            plan = None
            if not getattr(variable, "overwrite_with_gradient", False):
                plan = kron.layout(variable.shape, self.max_preconditioner_dim, self.blocking)
            self._factors.append(self._make_factors(variable, plan))

    def _make_factors(self, variable, plan):
        if plan is None:
            return None
        name = state_name(variable)
        left, right = {}, {}
        for i, j in plan.blocks:
            rows, cols = plan.block_shape(i, j)
            if plan.left:
                left[i, j] = self.add_state(
                    f"{name}_left_statistic_{i}_{j}",
                    (rows, rows),
                    layout=_state_layout.factor_layout(variable, "left", rows),
                )
            if plan.right:
                right[i, j] = self.add_state(
                    f"{name}_right_statistic_{i}_{j}",
                    (cols, cols),
                    layout=_state_layout.factor_layout(variable, "right", cols),
                )
        return Factors(plan, left, right)

    def factors_of(self, variable):
        """The ``Factors`` of ``variable``, or ``None`` (first-order fallback)."""
        return self._factors[self.index_of(variable)]

    def updated_statistics(self, factors, gradient_blocks, step):
        """Assign and return ``(left, right)``: ``{block: β·S + G Gᵀ}`` on statistics steps.

        Statistics are taken at steps ``1, 1 + s, 1 + 2s, …`` (``s =
        sample_every``), so the first refresh always has some.
        """
        keys = [("left", key) for key in factors.left] + [("right", key) for key in factors.right]
        stored = [getattr(factors, side)[key] for side, key in keys]
        current = tuple(variable.value for variable in stored)

        def accumulated():
            return tuple(
                kron.accumulate(value, gradient_blocks[key], side, self.statistics_decay)
                for (side, key), value in zip(keys, current, strict=True)
            )

        if self.sample_every == 1:
            new = accumulated()
        else:
            due = every(step, self.sample_every)
            new = self.periodic(due, accumulated, lambda: current)
        for variable, value in zip(stored, new, strict=True):
            self.assign(variable, value)
        pairs = list(zip(keys, new, strict=True))
        left = {key: value for (side, key), value in pairs if side == "left"}
        right = {key: value for (side, key), value in pairs if side == "right"}
        return left, right

    def refresh_due(self, step):
        """Whether ``step`` recomputes the preconditioner: ``start, start + f, …``."""
        return every(step, self.refresh_every, self.start_preconditioning_step)

    def preconditioning(self, step):
        """Whether ``step`` is preconditioned (``step >= start_preconditioning_step``)."""
        return step >= self.start_preconditioning_step

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "statistics_decay": self.statistics_decay,
                "sample_every": self.sample_every,
                "refresh_every": self.refresh_every,
                "start_preconditioning_step": self.start_preconditioning_step,
                "max_preconditioner_dim": self.max_preconditioner_dim,
                "blocking": self.blocking,
            }
        )
        return config


def _defaults(cls):
    """``{argument: default}`` of ``cls.__init__`` (a subclass's own defaults)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not p.empty}


def frobenius(x):
    """``‖x‖_F`` of a tensor."""
    return ops.sqrt(ops.sum(ops.square(x)))

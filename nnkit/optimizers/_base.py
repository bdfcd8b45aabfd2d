"""What every nnkit optimizer shares: float32 state, the step, and periodic work without writes in a branch.

An nnkit optimizer is a ``keras.optimizers.Optimizer`` whose ``update_step``
is written in ``keras.ops``. Its state lives in optimizer variables made by
``SecondOrderOptimizer.add_state`` (float32, whatever the variable's
dtype, so that statistics and factors stay float32 under ``mixed_float16``
and ``mixed_bfloat16``); they are saved with the optimizer, carried by JAX's
stateless train step and mirrored under ``tf.distribute``.

Periodic work (recomputing roots, bases or inverses every N steps) goes
through ``SecondOrderOptimizer.periodic``: a value-returning
``ops.cond`` whose branches are pure, followed by *unconditional*
assignments of what it returns. There is never a variable write inside a
branch: JAX's train step is stateless, and under ``tf.distribute`` a write in
a branch of a replica's update breaks. ``bench/second_order.py`` compares it
with the alternative, a host-side choice between two traced train functions
(see ``forced_refresh``).
"""

import contextlib
import re

import keras
from keras import ops

from nnkit import _validation as v
from nnkit._keras import optimizer as keras_optimizer


def state_name(variable):
    """A name fragment for the optimizer state of ``variable`` (its path, or its name; or a
    string), every character that is not a letter, digit or ``_`` replaced by ``_``."""
    if not isinstance(variable, str):
        variable = getattr(variable, "path", None) or variable.name
    return re.sub(r"\W", "_", variable)


def check_beta(name, value):
    """A decay rate in ``[0, 1)``."""
    return v.check_number(name, value, minimum=0.0, maximum=1.0, max_inclusive=False)


class SecondOrderOptimizer(keras.optimizers.Optimizer):
    """Base of nnkit's optimizers: float32 state, the step counter and periodic work.

    Subclasses implement ``build`` (calling ``super().build``) and
    ``update_step``, and make their state with ``add_state``.
    """

    def __init__(self, learning_rate, *, weight_decay=None, **kwargs):
        weight_decay = v.check_optional_number("weight_decay", weight_decay, minimum=0.0)
        super().__init__(
            learning_rate=v.check_learning_rate(learning_rate), weight_decay=weight_decay, **kwargs
        )
        self._forced_refresh = None

    def add_state(self, name, shape, initializer="zeros", *, dtype="float32", layout=None):
        """A float32 optimizer variable of ``shape``, named ``nnkit_optimizer_<name>``.

        Its aggregation is ``"only_first_replica"``: under ``tf.distribute`` it
        is written only in the update of each replica's copy, from the
        all-reduced gradients, so every replica holds the same value.
        ``dtype="int32"`` is for counters; state that holds numbers is float32.
        ``layout`` (a ``keras.distribution.TensorLayout`` or ``None``) places it
        under ``keras.distribution`` (``nnkit.optimizers._state_layout``).
        """
        return self.add_variable(
            shape=tuple(shape),
            initializer=initializer,
            dtype=dtype,
            aggregation="only_first_replica",
            layout=layout,
            name=f"nnkit_optimizer_{name}",
        )

    def index_of(self, variable):
        """The position of ``variable`` (as ``update_step`` receives it) in ``build``'s list."""
        return keras_optimizer.variable_index(self, variable)

    def current_step(self):
        """The step being taken (1 at the first update), an int32 tensor."""
        return ops.cast(self.iterations, "int32") + 1

    def periodic(self, due, compute, keep, *, refresh=False):
        """``compute()`` where ``due`` (a boolean tensor) holds, else ``keep()``.

        Both are pure functions returning the same structure of tensors; the
        caller assigns the result unconditionally. With ``refresh=True`` (the
        expensive recomputations), ``forced_refresh`` can fix the choice
        when the step is traced instead.
        """
        if refresh and self._forced_refresh is not None:
            return compute() if self._forced_refresh else keep()
        return ops.cond(due, compute, keep)


def every(step, period, start=1):
    """Whether ``step`` is one of ``start, start + period, start + 2·period, …`` (a tensor)."""
    offset = step - start
    return ops.logical_and(offset >= 0, ops.equal(ops.mod(offset, period), 0))


@contextlib.contextmanager
def forced_refresh(optimizer, refresh):
    """Trace ``optimizer``'s periodic work as always (``True``) or never (``False``) due.

    For measuring the host-side alternative to ``SecondOrderOptimizer.periodic``
    (``bench/second_order.py``): two train functions traced under this, one
    of them chosen by the host before every step.
    """
    before = optimizer._forced_refresh
    optimizer._forced_refresh = v.check_bool("refresh", refresh)
    try:
        yield
    finally:
        optimizer._forced_refresh = before

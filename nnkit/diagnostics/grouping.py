"""Group a model's variables by the layer that owns them (static, Python-side)."""

from typing import NamedTuple

from nnkit import _validation as v

#: Values of the ``by`` argument of ``group_variables``.
GROUPINGS = ("layer", "variable")


class VariableGroups(NamedTuple):
    """Which group each variable belongs to, and the groups' names, in forward order.

    ``names[k]`` is the name of group ``k``; ``index[i]`` is the group of the
    ``i``-th variable. Groups are numbered in order of first appearance, so
    for ``model.trainable_variables`` group 0 is the first layer.

    Attributes:
        names: Tuple of group names (layer paths, or variable paths).
        index: Tuple with one group number per variable.
    """

    names: tuple
    index: tuple

    @property
    def size(self):
        """The number of groups ``G``."""
        return len(self.names)


def variable_path(variable):
    """The ``/``-separated path of a variable, e.g. ``"sequential/dense_1/kernel"``.

    Keras 3 variables carry ``.path``; a ``tf.Variable`` carries ``.name``
    (``"dense/kernel:0"``, the ``:0`` output suffix is dropped); a string is
    taken as the path itself.
    """
    if isinstance(variable, str):
        path = variable
    else:
        path = getattr(variable, "path", None) or getattr(variable, "name", None)
        if not isinstance(path, str):
            raise TypeError(
                "Each variable must be a Keras variable (with `.path`), a tf.Variable "
                f"(with `.name`) or a path string, not {type(variable).__name__}. "
                f"Received: variable={variable!r}"
            )
        head, sep, tail = path.rpartition(":")
        if sep and tail.isdigit() and not hasattr(variable, "path"):
            path = head
    if not path:
        raise ValueError(f"A variable's path must not be empty. Received: variable={variable!r}")
    return path


def _layer_of(path):
    # "model/dense_1/kernel" -> "model/dense_1"; a bare "iteration" is its own group.
    head, sep, _ = path.rpartition("/")
    return head if sep and head else path


def group_variables(variables, *, by="layer"):
    """Group variables by the layer that owns them, or one group per variable.

    Use it once, outside the training step, to decide how gradient, weight
    and update norms are aggregated; the result is plain Python data that a
    compiled step can close over. ``by="layer"`` groups a variable under its
    path minus the last component (``"seq/dense_1/kernel"`` and
    ``"seq/dense_1/bias"`` → ``"seq/dense_1"``; a sub-layer of a block, such
    as ``"seq/dense_block/norm"``, is its own group). A path with no ``/``
    (optimizer variables, hand-made variables) is its own group.
    ``by="variable"`` gives one group per variable named by its full path
    (a repeated path gets a ``#2``, ``#3``, ... suffix so names stay unique).

    Args:
        variables: A sequence of Keras variables (anything with ``.path``),
            ``tf.Variable`` objects or path strings, e.g.
            ``model.trainable_variables``. Required.
        by: ``"layer"`` or ``"variable"``. Defaults to ``"layer"``.

    Returns:
        A ``VariableGroups(names, index)``: group names in order of first
        appearance and, per variable, its group number.

    Raises:
        TypeError: If ``variables`` is not a sequence or an item has no path.
        ValueError: If ``by`` is not a known grouping or a path is empty.

    Example:
    >>> from nnkit.diagnostics import group_variables
    >>> paths = ["seq/dense/kernel", "seq/dense/bias", "seq/dense_1/kernel", "iteration"]
    >>> groups = group_variables(paths)
    >>> groups.names, groups.index
    (('seq/dense', 'seq/dense_1', 'iteration'), (0, 0, 1, 2))
    >>> group_variables(paths[:2], by="variable").names
    ('seq/dense/kernel', 'seq/dense/bias')
    """
    v.check_one_of("by", by, GROUPINGS)
    variables = v.check_sequence(
        "variables", variables, "a sequence of variables (e.g. model.trainable_variables)"
    )
    names, index, position = [], [], {}
    for variable in variables:
        path = variable_path(variable)
        if by == "layer":
            name = _layer_of(path)
        else:
            name, count = path, 1
            while name in position:
                count += 1
                name = f"{path}#{count}"
        if name not in position:
            position[name] = len(names)
            names.append(name)
        index.append(position[name])
    return VariableGroups(tuple(names), tuple(index))


def check_groups(groups, count, where):
    """``groups`` is a ``VariableGroups`` covering exactly ``count`` tensors."""
    if not isinstance(groups, VariableGroups):
        raise TypeError(
            "`groups` must be a VariableGroups (from nnkit.diagnostics.group_variables), "
            f"not {type(groups).__name__}. Received: groups={groups!r}"
        )
    if len(groups.index) != count:
        raise ValueError(
            f"`groups` covers {len(groups.index)} variables but {where} has {count}. "
            f"Received: groups={groups!r}"
        )
    size = len(groups.names)
    if any(
        isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < size for k in groups.index
    ):
        raise ValueError(
            f"`groups.index` must hold group numbers in [0, {size}). Received: groups={groups!r}"
        )
    return groups

"""An architecture space: named discrete choices, some conditional on others, and a builder.

A space is a list of `Choice`s and a function that builds a Keras model from
one architecture (a dict of the *active* choices). Every searcher of
``nnkit.search`` works on this one shape: sampling (keras-tuner's
``HyperParameters`` with conditional scopes, or the space's own seeded
sampler), enumeration (for the tabular benchmark), mutation and the
one-choice neighbourhood. A choice is active when its parent is active and
the parent's value is in ``parent_values``; inactive choices are neither
sampled nor recorded, so an architecture with two stages has no
``stage_2_*`` keys (keras-tuner#272, keras-io#1116).
"""

import keras
import keras_tuner

from nnkit import _validation as v

_VALUE_TYPES = (bool, int, float, str)


@keras.saving.register_keras_serializable(package="nnkit")
class Choice:
    """One named discrete decision of an architecture space.

    Use it to write your own `ArchitectureSpace`: the values are tried as
    listed, and a choice with a parent is active only when the parent is active
    and takes one of ``parent_values`` (keras-tuner's conditional scope).

    Formula: ``active(c, arch) = c.parent is None or arch.get(c.parent) in c.parent_values``.

    Args:
        name: The key of the choice in an architecture dict. Required.
        values: The options, a non-empty list of plain values of one type
            (bool, int, float or str). Required.
        parent: Name of the choice this one depends on, or ``None``.
            Defaults to ``None``.
        parent_values: The parent's values under which this choice is active.
            Defaults to ``None`` (required with ``parent``).

    Raises:
        TypeError: If ``name`` is not a string or a value is not plain.
        ValueError: If ``values`` is empty or repeats a value, or ``parent``
            and ``parent_values`` are not given together.

    Example:
    >>> from nnkit.search import Choice
    >>> Choice("stage_1_width", [16, 32], parent="stages", parent_values=[2, 3]).values
    (16, 32)

    References:
        O'Malley et al., KerasTuner (``HyperParameters.conditional_scope``), 2019.
    """

    def __init__(self, name, values, *, parent=None, parent_values=None):
        self.name = v.check_str("name", name)
        values = tuple(values) if isinstance(values, (list, tuple)) else values
        if not isinstance(values, tuple) or not values:
            raise ValueError(
                f"`values` must be a non-empty list of options. Received: values={values!r}"
            )
        kinds = {type(value) for value in values}
        if len(kinds) != 1 or not issubclass(kinds.pop(), _VALUE_TYPES):
            raise TypeError(
                "`values` must be plain values of one type (bool, int, float or str). "
                f"Received: values={values!r}"
            )
        if len(set(values)) != len(values):
            raise ValueError(f"`values` repeats an option. Received: values={values!r}")
        self.values = values
        if (parent is None) != (parent_values is None):
            raise ValueError(
                "`parent` and `parent_values` go together. "
                f"Received: parent={parent!r}, parent_values={parent_values!r}"
            )
        self.parent = None if parent is None else v.check_str("parent", parent)
        self.parent_values = None if parent_values is None else tuple(parent_values)

    def get_config(self):
        return {
            "name": self.name,
            "values": list(self.values),
            "parent": self.parent,
            "parent_values": None if self.parent_values is None else list(self.parent_values),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, Choice) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        where = "" if self.parent is None else f", parent={self.parent!r}"
        return f"Choice({self.name!r}, {list(self.values)!r}{where})"


class ArchitectureSpace:
    """A discrete, conditional architecture space and the function that builds its models.

    Use it to search architectures with any searcher of ``nnkit.search``
    (``residual_mlp_space`` and ``conv1d_space`` return one; write your own
    from `Choice`s and a ``build(arch, input_shape, num_classes)`` function).

    Formula: an architecture is ``{c.name: value for c in choices if active(c)}``;
    the space holds ``Σ_active-sets Π |values|`` architectures (`size`).

    Args:
        choices: The `Choice`s, each parent listed before its children.
            Required.
        build: ``build(arch, input_shape, num_classes) -> keras.Model`` (not
            compiled). Required.
        name: A label for records and plots. Defaults to ``"space"``.

    Raises:
        TypeError: If ``choices`` holds something other than `Choice`s or
            ``build`` is not callable.
        ValueError: If two choices share a name or a parent is unknown or
            listed after its child.

    Example:
    >>> from nnkit.search import ArchitectureSpace, Choice
    >>> space = ArchitectureSpace(
    ...     [Choice("depth", [1, 2]), Choice("width_2", [8, 16], parent="depth",
    ...      parent_values=[2])], build=lambda arch, shape, classes: None)
    >>> space.size
    3
    >>> space.architectures()[0]
    {'depth': 1}

    References:
        Real et al., "Regularized Evolution for Image Classifier Architecture
        Search", AAAI 2019 (architectures as lists of discrete choices).
    """

    def __init__(self, choices, *, build, name="space"):
        choices = v.check_sequence("choices", choices, "a list of nnkit.search.Choice objects")
        seen = set()
        for choice in choices:
            if not isinstance(choice, Choice):
                raise TypeError(
                    f"`choices` must hold nnkit.search.Choice objects. Received: choices={choices!r}"
                )
            if choice.name in seen:
                raise ValueError(f"Two choices are named {choice.name!r}. Received: {choices!r}")
            if choice.parent is not None and choice.parent not in seen:
                raise ValueError(
                    f"The parent {choice.parent!r} of {choice.name!r} must be listed before it. "
                    f"Received: choices={choices!r}"
                )
            seen.add(choice.name)
        if not callable(build):
            raise TypeError(f"`build` must be callable. Received: build={build!r}")
        self.choices = tuple(choices)
        self.build_fn = build
        self.name = v.check_str("name", name)
        self._by_name = {choice.name: choice for choice in self.choices}

    # -- the architecture as a dict ------------------------------------------

    @staticmethod
    def _own(choice, value):
        """``value`` as the choice's own option (keras-tuner hands bools back as ints)."""
        for option in choice.values:
            if option == value and type(value) is not type(option):
                return option
        return value

    @staticmethod
    def _active(choice, arch):
        return choice.parent is None or (
            choice.parent in arch and arch[choice.parent] in choice.parent_values
        )

    def complete(self, pick):
        """The architecture that ``pick(choice)`` gives, choosing only the active choices."""
        arch = {}
        for choice in self.choices:
            if self._active(choice, arch):
                arch[choice.name] = pick(choice)
        return arch

    def key(self, arch):
        """A hashable, order-independent identity of an architecture."""
        return tuple((c.name, arch[c.name]) for c in self.choices if c.name in arch)

    def architectures(self):
        """Every architecture of the space, in a fixed order (for exhaustive tables)."""
        found = [{}]
        for choice in self.choices:
            grown = []
            for arch in found:
                if self._active(choice, arch):
                    grown.extend({**arch, choice.name: value} for value in choice.values)
                else:
                    grown.append(arch)
            found = grown
        return found

    @property
    def size(self):
        return len(self.architectures())

    # -- keras-tuner ------------------------------------------------------------

    def sample(self, hp):
        """Declare the active choices on keras-tuner's ``hp`` and return the architecture.

        Each child is declared inside ``hp.conditional_scope(parent, values)``;
        the returned dict holds the active choices only.
        """
        arch = {}
        for choice in self.choices:
            if not self._active(choice, arch):
                continue
            if choice.parent is None:
                value = hp.Choice(choice.name, list(choice.values))
            else:
                with hp.conditional_scope(choice.parent, list(choice.parent_values)):
                    value = hp.Choice(choice.name, list(choice.values))
            arch[choice.name] = self._own(choice, value)
        return arch

    def hyperparameters(self):
        """A keras-tuner ``HyperParameters`` holding every choice with its conditions."""
        hp = keras_tuner.HyperParameters()
        for choice in self.choices:
            if choice.parent is None:
                hp.Choice(choice.name, list(choice.values))
            else:
                with hp.conditional_scope(choice.parent, list(choice.parent_values)):
                    hp.Choice(choice.name, list(choice.values))
        return hp

    def from_values(self, values):
        """The architecture among keras-tuner's ``values`` (inactive entries dropped)."""
        return self.complete(lambda choice: self._own(choice, values[choice.name]))

    # -- moves of the searchers ---------------------------------------------------

    def random(self, rng):
        """A uniformly chosen value per active choice, from a ``numpy`` Generator."""
        return self.complete(lambda choice: choice.values[int(rng.integers(len(choice.values)))])

    def from_unit(self, point):
        """The architecture of a point of ``[0, 1)^len(choices)`` (one coordinate per choice).

        Quasi-random (Sobol) search maps its points through this; an inactive
        choice's coordinate is ignored.
        """
        index = {choice.name: i for i, choice in enumerate(self.choices)}

        def pick(choice):
            u = min(max(float(point[index[choice.name]]), 0.0), 1.0 - 1e-12)
            return choice.values[int(u * len(choice.values))]

        return self.complete(pick)

    def neighbours(self, arch):
        """Every architecture that differs from ``arch`` in one active choice.

        Children activated by the change take their first value; children
        deactivated by it are dropped.
        """
        found = []
        for choice in self.choices:
            if choice.name not in arch:
                continue
            for value in choice.values:
                if value == arch[choice.name]:
                    continue
                changed = {**arch, choice.name: value}
                found.append(
                    self.complete(lambda c, changed=changed: changed.get(c.name, c.values[0]))
                )
        return found

    def mutate(self, arch, rng):
        """One neighbour of ``arch`` chosen uniformly at random (one choice changed)."""
        options = self.neighbours(arch)
        return options[int(rng.integers(len(options)))] if options else dict(arch)

    # -- models -----------------------------------------------------------------------

    def build(self, arch, input_shape, num_classes):
        """The (uncompiled) Keras model of ``arch``."""
        return self.build_fn(dict(arch), tuple(input_shape), int(num_classes))

    def __repr__(self):
        return f"ArchitectureSpace({self.name!r}, {len(self.choices)} choices)"


def stage_choices(stages, per_stage):
    """The depth choice ``stages`` and, per stage ``i``, a ``stage_{i}_{name}`` choice.

    Stage ``i`` (0-based) is active when ``stages > i`` (stage 0 always, when
    every depth is at least 1), so the architecture of a 2-stage network has
    no ``stage_2_*`` keys.

    Args:
        stages: The options for the number of stages, ints ``>= 1``. Required.
        per_stage: ``{name: options}`` of each stage's choices. Required.

    Returns:
        The list of `Choice`s, parents first.

    Example:
    >>> from nnkit.search import stage_choices
    >>> [c.name for c in stage_choices([1, 2], {"width": [8, 16]})]
    ['stages', 'stage_0_width', 'stage_1_width']
    """
    stages = v.check_sequence("stages", stages, "a non-empty list of ints")
    stages = tuple(v.check_positive_int("stages", n) for n in stages)
    if not stages:
        raise ValueError(f"`stages` must be a non-empty list. Received: stages={stages!r}")
    if not isinstance(per_stage, dict) or not all(
        isinstance(name, str) and isinstance(values, (list, tuple)) and values
        for name, values in per_stage.items()
    ):
        raise TypeError(
            "`per_stage` must be a dict of {name: non-empty list of options}. "
            f"Received: per_stage={per_stage!r}"
        )
    found = [Choice("stages", stages)]
    for i in range(max(stages)):
        deeper = [n for n in stages if n > i]
        for name, values in per_stage.items():
            if i == 0 and min(stages) >= 1:
                found.append(Choice(f"stage_{i}_{name}", values))
            else:
                found.append(
                    Choice(f"stage_{i}_{name}", values, parent="stages", parent_values=deeper)
                )
    return found

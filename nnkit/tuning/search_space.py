"""``SearchSpace``: the knobs of an MLP sweep, declared on ``keras_tuner.HyperParameters``."""

import copy

import keras

from nnkit import _validation as v
from nnkit.tuning import _knobs


@keras.saving.register_keras_serializable(package="nnkit")
class SearchSpace:
    """The hyperparameters of an MLP sweep, declared on ``keras_tuner.HyperParameters``.

    Use it to say what a sweep varies: take the default space (the knobs
    training is most sensitive to, plus a small architecture search), narrow
    it, fix or drop knobs, or add your own. ``MLPHyperModel`` and
    ``nnkit.tuning.tune`` turn the sampled values into a compiled model; a
    bring-your-own ``build(hp)`` can call ``space.sample(hp)`` itself.

    The default knobs (keras-tuner type, range, default):

    | knob | type | range | default | used as |
    | --- | --- | --- | --- | --- |
    | ``learning_rate`` | Float, log | 1e-4 … 1e-1 | 1e-3 | peak rate of the schedule |
    | ``optimizer`` | Choice | adam, adamw, sgd | adam | ``sgd`` has momentum |
    | ``momentum`` | Float (``optimizer == "sgd"``) | 0.8 … 0.99 | 0.9 | SGD momentum |
    | ``weight_decay`` | Float, log | 1e-6 … 1e-2 | 1e-4 | decoupled (adamw) or penalty |
    | ``dropout`` | Float | 0 … 0.5 | 0 | in every block |
    | ``schedule`` | Choice | constant, cosine, step | cosine | nnkit schedule |
    | ``warmup_fraction`` | Float (``schedule == "cosine"``) | 0 … 0.2 | 0.05 | of all steps |
    | ``step_drops`` | Int (``schedule == "step"``) | 1 … 3 | 2 | evenly spaced drops |
    | ``step_factor`` | Float, log (``schedule == "step"``) | 0.05 … 0.5 | 0.1 | per drop |
    | ``batch_size`` | Int, log, ×2 steps | 16 … 256 | 32 | ``fit(batch_size=)`` |
    | ``depth`` | Int | 1 … 4 | 2 | hidden blocks |
    | ``width`` | Int, log, ×2 steps | 32 … 512 | 128 | units per block |
    | ``activation`` | Choice | relu, gelu, silu, tanh | relu | hidden activation |
    | ``normalization`` | Choice | none, batch, layer | none | in every block |
    | ``residual`` | Boolean | | False | residual blocks |

    A conditional knob (``momentum``, the schedules' parameters) is declared
    in ``hp.conditional_scope(parent, values)``: it is active, sampled and
    recorded only when its parent takes one of those values, and ``None``
    otherwise. When the parent is fixed or dropped the condition is decided
    once: the child is then declared plainly, or left out.

    A space is a value: every method returns a new one.

    * ``restrict(learning_rate=(1e-3, 1e-2), optimizer=["adam", "sgd"])``
      narrows ranges (within the current ones) and choice lists; a default
      outside the new range moves to the nearest bound (first value); a
      child whose parent can no longer activate it is dropped.
    * ``fixed(depth=2)`` declares ``hp.Fixed``: recorded, never varied.
    * ``drop("residual")`` leaves a knob (and its children) out of the
      sweep: its default is used and nothing is recorded.
    * ``extend(fn)`` calls ``fn(hp)`` after the built-in knobs; its dict
      of values (or ``None``) is merged into ``sample(hp)``'s result, so
      a subclass of ``MLPHyperModel`` or your own build can use them.

    Args:
        knobs: The knob list, as in ``get_config()["knobs"]`` (dicts with
            ``name``, ``type``, ``min``, ``max``, ``sampling``, ``step``,
            ``values``, ``default``, ``parent``), or ``None`` for the default
            space above. Build variations with the methods rather than by
            hand. Defaults to ``None``.

    Raises:
        TypeError: If ``knobs`` is not a list of dicts, or a value has the
            wrong type.
        ValueError: If a knob is malformed (unknown type, ``min > max``, a
            default outside its range, log sampling from ``min <= 0``, a
            duplicate name, a parent that is not an earlier knob).

    Example:
    >>> from nnkit.tuning import SearchSpace
    >>> space = SearchSpace().restrict(learning_rate=(1e-3, 1e-2)).fixed(depth=2)
    >>> space = space.drop("residual", "normalization")
    >>> hp = space.hyperparameters()
    >>> [(p.name, type(p).__name__) for p in hp.space][:4]
    [('learning_rate', 'Float'), ('optimizer', 'Choice'), ('momentum', 'Float'), ('weight_decay', 'Float')]
    >>> values = space.sample(hp)  # the defaults of a fresh HyperParameters
    >>> values["learning_rate"], values["momentum"], values["depth"], values["residual"]
    (0.001, None, 2, False)

    References:
        keras-tuner ``HyperParameters.conditional_scope``; Bengio, "Practical
        Recommendations for Gradient-Based Training of Deep Architectures",
        2012 (the learning rate first); Bergstra & Bengio, "Random Search for
        Hyper-Parameter Optimization", JMLR 2012.
    """

    def __init__(self, knobs=None):
        if knobs is None:
            knobs = _knobs.default_knobs()
        knobs = v.check_sequence("knobs", knobs, "a list of knob dicts or None")
        checked = []
        for index, knob in enumerate(knobs):
            knob = _knobs.check_knob(index, knob)
            names = [k["name"] for k in checked]
            if knob["name"] in names:
                raise ValueError(f"Knob names must be unique. Received: {knob['name']!r} twice")
            parent = knob["parent"]
            if parent is not None and parent["name"] not in names:
                raise ValueError(
                    f"`{knob['name']}`: its parent {parent['name']!r} must be an earlier knob. "
                    f"Received: knobs in the order {names + [knob['name']]}"
                )
            checked.append(knob)
        self._knobs = checked
        self._extensions = []

    # -- reading -----------------------------------------------------------------

    @property
    def knobs(self):
        """A copy of the knob dicts, in declaration order."""
        return copy.deepcopy(self._knobs)

    @property
    def names(self):
        """Names of the knobs a sweep varies or records (not the dropped ones)."""
        return [k["name"] for k in self._knobs if k["type"] != "dropped"]

    def knob(self, name):
        """A copy of one knob dict; ``KeyError`` if there is none of that name."""
        for knob in self._knobs:
            if knob["name"] == name:
                return copy.deepcopy(knob)
        raise KeyError(f"No knob named {name!r}. Known: {[k['name'] for k in self._knobs]}")

    def defaults(self):
        """``{name: value}`` of the built-in knobs at their defaults (``None`` when inactive)."""
        values = {}
        for knob in self._knobs:
            parent = knob["parent"]
            active = parent is None or values.get(parent["name"]) in parent["values"]
            values[knob["name"]] = knob["default"] if active else None
        return values

    # -- variations --------------------------------------------------------------

    def _with(self, knobs):
        space = SearchSpace(knobs)
        space._extensions = list(self._extensions)
        return space

    def _check_names(self, names, method):
        known = [k["name"] for k in self._knobs]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"{method}: no knob named {unknown[0]!r}. Known knobs: {known}. "
                f"Received: {unknown!r}"
            )

    def restrict(self, **ranges):
        """A space with narrower ranges: ``name=(low, high)`` or ``name=[choices]``.

        Args:
            **ranges: For a float/int knob a ``(low, high)`` inside its
                current range; for a choice knob a list of some of its values.

        Returns:
            A new ``SearchSpace``.
        """
        self._check_names(list(ranges), "restrict")
        knobs = [
            _knobs.narrow(k["name"], k, ranges[k["name"]]) if k["name"] in ranges else dict(k)
            for k in self._knobs
        ]
        return self._with(_knobs.prune(knobs))

    def fixed(self, **values):
        """A space in which the named knobs are ``hp.Fixed`` at the given values.

        Args:
            **values: ``name=value``; a float/int knob takes a number, a
                boolean knob a bool, a choice knob any value of the type of
                its choices.

        Returns:
            A new ``SearchSpace``.
        """
        self._check_names(list(values), "fixed")
        knobs = [
            _knobs.constant(k, "fixed", _knobs.fixed_value(k, values[k["name"]]))
            if k["name"] in values
            else dict(k)
            for k in self._knobs
        ]
        return self._with(_knobs.prune(knobs))

    def drop(self, *names):
        """A space without the named knobs (and their children): their defaults are used.

        Args:
            *names: Knob names.

        Returns:
            A new ``SearchSpace``.
        """
        self._check_names(list(names), "drop")
        dropped = set(names)
        knobs = []
        for knob in self._knobs:
            parent = knob["parent"]
            if knob["name"] in dropped or (parent is not None and parent["name"] in dropped):
                dropped.add(knob["name"])
                knob = _knobs.constant(knob, "dropped", knob["default"])
            knobs.append(dict(knob))
        return self._with(knobs)

    def with_generalization(self):
        """A space that also varies the generalization techniques (opt-in).

        Appends the knobs below (after the existing ones, so the default
        space and its sweeps are unchanged unless you call this); every
        default is "off", so the default trial trains as before.
        ``MLPHyperModel`` turns them into ``SharpnessAwareMinimization``,
        ``StochasticWeightAveraging``, ``mlp(drop_path=)``, ``MixUp`` and a
        label-smoothed cross-entropy; ``sensitivity_report`` then ranks them
        with the other knobs.

        | knob | type | range | default | used as |
        | --- | --- | --- | --- | --- |
        | ``sam`` | Boolean | | False | wrap in ``SharpnessAwareMinimization`` |
        | ``sam_rho`` | Float, log (``sam``) | 0.01 … 0.5 | 0.05 | its ``rho`` |
        | ``swa`` | Boolean | | False | ``StochasticWeightAveraging`` callback |
        | ``swa_start_fraction`` | Float (``swa``) | 0.5 … 0.9 | 0.75 | start epoch / epochs |
        | ``drop_path`` | Float (``residual``) | 0 … 0.3 | 0 | ``mlp(drop_path=)`` |
        | ``mixup`` | Boolean | | False | wrap in ``MixUp`` |
        | ``mixup_alpha`` | Float, log (``mixup``) | 0.1 … 1 | 0.2 | its ``alpha`` |
        | ``label_smoothing`` | Float | 0 … 0.2 | 0 | of the cross-entropy loss |

        Returns:
            A new ``SearchSpace``.

        Raises:
            ValueError: If the space already has one of these knobs, or
                has no ``residual`` knob (``drop_path``'s parent; drop
                ``drop_path`` afterwards if you dropped ``residual``).
        """
        return self._with([*self.knobs, *_knobs.generalization_knobs()])

    def extend(self, fn):
        """A space that also calls ``fn(hp)`` (your own ``hp.Float(...)`` etc.) when sampled.

        Args:
            fn: A callable taking a ``keras_tuner.HyperParameters`` and
                returning a dict of values (or ``None``).

        Returns:
            A new ``SearchSpace``.
        """
        if not callable(fn):
            raise TypeError(
                f"`fn` must be a callable taking `hp`, not {type(fn).__name__}. Received: fn={fn!r}"
            )
        space = self._with(self.knobs)
        space._extensions.append(fn)
        return space

    # -- keras-tuner ---------------------------------------------------------------

    def _declare(self, hp, knob):
        name, kind = knob["name"], knob["type"]
        if kind == "float":
            return hp.Float(
                name,
                knob["min"],
                knob["max"],
                step=knob["step"],
                sampling=knob["sampling"],
                default=knob["default"],
            )
        if kind == "int":
            return hp.Int(
                name,
                knob["min"],
                knob["max"],
                step=knob["step"],
                sampling=knob["sampling"],
                default=knob["default"],
            )
        if kind == "choice":
            return hp.Choice(name, knob["values"], default=knob["default"])
        if kind == "boolean":
            return hp.Boolean(name, default=knob["default"])
        if kind == "fixed":
            return hp.Fixed(name, knob["default"])
        return knob["default"]  # dropped

    def sample(self, hp):
        """Declare the knobs on ``hp`` and return their values for this trial.

        Args:
            hp: A ``keras_tuner.HyperParameters`` (the ``hp`` of ``build(hp)``).

        Returns:
            ``{name: value}`` for every knob (``None`` when a conditional knob
            is inactive; the default for a dropped one), then what the
            ``extend`` functions returned.
        """
        values = {}
        by_name = {}
        for knob in self._knobs:
            by_name[knob["name"]] = knob
            parent = knob["parent"]
            if parent is None:
                values[knob["name"]] = self._declare(hp, knob)
                continue
            parent_knob = by_name[parent["name"]]
            if knob["type"] == "dropped" or parent_knob["type"] in ("fixed", "dropped"):
                active = values[parent["name"]] in parent["values"]
                values[knob["name"]] = self._declare(hp, knob) if active else None
                continue
            with hp.conditional_scope(parent["name"], parent["values"]):
                values[knob["name"]] = self._declare(hp, knob)
        for fn in self._extensions:
            extra = fn(hp)
            if extra is not None:
                if not isinstance(extra, dict):
                    raise TypeError(
                        f"A SearchSpace.extend function must return a dict of values or None, "
                        f"not {type(extra).__name__}. Received: {extra!r}"
                    )
                values.update(extra)
        return values

    def hyperparameters(self):
        """A new ``keras_tuner.HyperParameters`` with this space declared (at the defaults).

        Returns:
            The ``HyperParameters``; pass it as a tuner's ``hyperparameters`` or
            read ``.space``.
        """
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        self.sample(hp)
        return hp

    # -- config ------------------------------------------------------------------

    def get_config(self):
        if self._extensions:
            raise TypeError(
                "A SearchSpace extended with functions has no JSON config (functions are "
                f"code, not data). Received: extensions={self._extensions!r}"
            )
        return {"knobs": self.knobs}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return (
            isinstance(other, SearchSpace)
            and self._knobs == other._knobs
            and self._extensions == other._extensions
        )

    __hash__ = None

    def __repr__(self):
        parts = []
        for knob in self._knobs:
            kind = knob["type"]
            if kind in ("float", "int"):
                text = f"{knob['min']:g}..{knob['max']:g}" + (
                    f" ({knob['sampling']})" if knob["sampling"] != "linear" else ""
                )
            elif kind == "choice":
                text = "|".join(str(x) for x in knob["values"])
            elif kind == "boolean":
                text = "bool"
            else:
                text = f"{kind} {knob['default']!r}"
            if knob["parent"] is not None:
                text += f" if {knob['parent']['name']} in {knob['parent']['values']}"
            parts.append(f"{knob['name']}: {text}")
        extra = f", +{len(self._extensions)} extension(s)" if self._extensions else ""
        return f"SearchSpace({'; '.join(parts)}{extra})"

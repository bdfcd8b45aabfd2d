"""Knob dicts of a ``SearchSpace``: the default table, checks, and narrowing."""

from nnkit import _validation as v

#: Kinds of knob. ``"fixed"`` is declared as ``hp.Fixed`` (recorded, never varied);
#: ``"dropped"`` is not declared at all: the hypermodel uses the knob's default.
KNOB_TYPES = ("float", "int", "choice", "boolean", "fixed", "dropped")
SAMPLINGS = ("linear", "log", "reverse_log")
KEYS = ("name", "type", "min", "max", "sampling", "step", "values", "default", "parent")

_ACTIVATIONS = ["relu", "gelu", "silu", "tanh"]
# name, type, default, min, max, sampling, step, values, parent (name, values)
_DEFAULTS = (
    ("learning_rate", "float", 1e-3, 1e-4, 1e-1, "log", None, None, None),
    ("optimizer", "choice", "adam", None, None, None, None, ["adam", "adamw", "sgd"], None),
    ("momentum", "float", 0.9, 0.8, 0.99, "linear", None, None, ("optimizer", ["sgd"])),
    ("weight_decay", "float", 1e-4, 1e-6, 1e-2, "log", None, None, None),
    ("dropout", "float", 0.0, 0.0, 0.5, "linear", None, None, None),
    ("schedule", "choice", "cosine", None, None, None, None, ["constant", "cosine", "step"], None),
    ("warmup_fraction", "float", 0.05, 0.0, 0.2, "linear", None, None, ("schedule", ["cosine"])),
    ("step_drops", "int", 2, 1, 3, "linear", None, None, ("schedule", ["step"])),
    ("step_factor", "float", 0.1, 0.05, 0.5, "log", None, None, ("schedule", ["step"])),
    ("batch_size", "int", 32, 16, 256, "log", 2, None, None),
    ("depth", "int", 2, 1, 4, "linear", None, None, None),
    ("width", "int", 128, 32, 512, "log", 2, None, None),
    ("activation", "choice", "relu", None, None, None, None, _ACTIVATIONS, None),
    ("normalization", "choice", "none", None, None, None, None, ["none", "batch", "layer"], None),
    ("residual", "boolean", False, None, None, None, None, None, None),
)


# The opt-in generalization knobs (SearchSpace.with_generalization()); every default is
# "off", so a sweep's default trial trains exactly as without them.
_GENERALIZATION = (
    ("sam", "boolean", False, None, None, None, None, None, None),
    ("sam_rho", "float", 0.05, 0.01, 0.5, "log", None, None, ("sam", [True])),
    ("swa", "boolean", False, None, None, None, None, None, None),
    ("swa_start_fraction", "float", 0.75, 0.5, 0.9, "linear", None, None, ("swa", [True])),
    ("drop_path", "float", 0.0, 0.0, 0.3, "linear", None, None, ("residual", [True])),
    ("mixup", "boolean", False, None, None, None, None, None, None),
    ("mixup_alpha", "float", 0.2, 0.1, 1.0, "log", None, None, ("mixup", [True])),
    ("label_smoothing", "float", 0.0, 0.0, 0.2, "linear", None, None, None),
)


def _table(rows):
    knobs = []
    for name, kind, default, low, high, sampling, step, values, parent in rows:
        knobs.append(
            {
                "name": name,
                "type": kind,
                "min": low,
                "max": high,
                "sampling": sampling,
                "step": step,
                "values": None if values is None else list(values),
                "default": default,
                "parent": None if parent is None else {"name": parent[0], "values": parent[1]},
            }
        )
    return knobs


def generalization_knobs():
    """SAM (``sam``, ``sam_rho``), SWA (``swa``, ``swa_start_fraction``), ``drop_path``, MixUp
    (``mixup``, ``mixup_alpha``) and ``label_smoothing``; each off at its default."""
    return _table(_GENERALIZATION)


def default_knobs():
    """The default space: the sensitive training knobs, then the architecture knobs."""
    return _table(_DEFAULTS)


def check_knob(index, knob):
    where = f"knobs[{index}]"
    v.check_instance(where, knob, dict, "a knob dict (see SearchSpace.get_config())")
    unknown = sorted(set(knob) - set(KEYS))
    if unknown or "name" not in knob or "type" not in knob:
        raise ValueError(
            f"`{where}` must have the keys {list(KEYS)} (name and type required). "
            f"Received: {where}={knob!r}"
        )
    knob = {key: knob.get(key) for key in KEYS}
    name = v.check_str(f"{where}['name']", knob["name"])
    kind = v.check_one_of(f"{where}['type']", knob["type"], KNOB_TYPES)
    if kind in ("float", "int"):
        check = v.check_int if kind == "int" else v.check_number
        low = check(f"{name}: min", knob["min"])
        high = check(f"{name}: max", knob["max"])
        if low > high:
            raise ValueError(f"`{name}` needs min <= max. Received: min={low}, max={high}")
        sampling = v.check_one_of(f"{name}: sampling", knob["sampling"] or "linear", SAMPLINGS)
        if sampling != "linear" and low <= 0:
            raise ValueError(
                f"`{name}` is sampled on a {sampling} scale, so its min must be > 0. "
                f"Received: min={low}"
            )
        step = knob["step"]
        if step is not None:
            step = check(f"{name}: step", step)
            if step <= (1 if sampling != "linear" else 0):
                raise ValueError(
                    f"`{name}`: step must be > {1 if sampling != 'linear' else 0} with "
                    f"{sampling} sampling. Received: step={step}"
                )
        default = check(f"{name}: default", knob["default"])
        if not low <= default <= high:
            raise ValueError(
                f"`{name}`: default must lie in [min, max] = [{low}, {high}]. "
                f"Received: default={default}"
            )
        knob.update(min=low, max=high, sampling=sampling, step=step, default=default)
    elif kind == "choice":
        values = knob["values"]
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(
                f"`{name}`: a choice needs a non-empty list of values. Received: values={values!r}"
            )
        values = [v.check_json_plain(f"{name}: values[{i}]", x) for i, x in enumerate(values)]
        if len({type(x) for x in values}) != 1 or isinstance(values[0], (list, dict, type(None))):
            raise ValueError(
                f"`{name}`: choice values must be str, int, float or bool, all of one type "
                f"(keras-tuner's rule). Received: values={values!r}"
            )
        if len(set(values)) != len(values):
            raise ValueError(f"`{name}`: choice values must be distinct. Received: {values!r}")
        if knob["default"] not in values:
            raise ValueError(
                f"`{name}`: default must be one of the values {values!r}. "
                f"Received: default={knob['default']!r}"
            )
        knob["values"] = values
    elif kind == "boolean":
        v.check_bool(f"{name}: default", knob["default"])
    else:  # fixed, dropped: any plain scalar
        v.check_json_plain(f"{name}: default", knob["default"])
    if kind not in ("float", "int"):
        if kind != "choice":
            knob["values"] = None
        knob.update(min=None, max=None, sampling=None, step=None)
    parent = knob["parent"]
    if parent is not None:
        if not isinstance(parent, dict) or set(parent) != {"name", "values"}:
            raise ValueError(
                f"`{name}`: parent must be {{'name': knob, 'values': [...]}}. "
                f"Received: parent={parent!r}"
            )
        knob["parent"] = {
            "name": v.check_str(f"{name}: parent name", parent["name"]),
            "values": list(parent["values"]),
        }
    return knob


def narrow(name, knob, spec):
    """What ``restrict(name=spec)`` asks for: a numeric range or a list of choices."""
    kind = knob["type"]
    if kind in ("float", "int"):
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            raise TypeError(
                f"`{name}` is a {kind} knob: pass its new range as (low, high). "
                f"Received: {name}={spec!r}"
            )
        check = v.check_int if kind == "int" else v.check_number
        low, high = check(f"{name}[0]", spec[0]), check(f"{name}[1]", spec[1])
        if not knob["min"] <= low <= high <= knob["max"]:
            raise ValueError(
                f"`{name}` can only be narrowed within its range [{knob['min']}, {knob['max']}] "
                f"(low <= high). Received: {name}={spec!r}"
            )
        default = min(max(knob["default"], low), high)
        return dict(knob, min=low, max=high, default=default)
    if kind == "choice":
        if not isinstance(spec, (list, tuple)) or not spec:
            raise TypeError(
                f"`{name}` is a choice knob: pass a non-empty list of its values. "
                f"Received: {name}={spec!r}"
            )
        missing = [x for x in spec if x not in knob["values"]]
        if missing:
            raise ValueError(
                f"`{name}` can only be restricted to some of its values {knob['values']!r}. "
                f"Received: {name}={spec!r}"
            )
        values = [x for x in knob["values"] if x in spec]
        default = knob["default"] if knob["default"] in values else values[0]
        return dict(knob, values=values, default=default)
    raise ValueError(
        f"`{name}` is a {kind} knob and has no range to narrow; use fixed({name}=...) or "
        f"drop({name!r}). Received: {name}={spec!r}"
    )


def parent_options(knob):
    """The values a parent knob can take in a sweep."""
    kind = knob["type"]
    if kind == "choice":
        return list(knob["values"])
    if kind == "boolean":
        return [False, True]
    if kind in ("fixed", "dropped"):
        return [knob["default"]]
    return None  # numeric parents: any value


def constant(knob, kind, value):
    """``knob`` turned into a ``"fixed"`` or ``"dropped"`` knob at ``value``."""
    return dict(
        knob, type=kind, default=value, min=None, max=None, sampling=None, step=None, values=None
    )


def fixed_value(knob, value):
    """``value`` checked as a value ``knob`` can be fixed to."""
    name, kind = knob["name"], knob["type"]
    if kind == "int":
        return v.check_int(name, value)
    if kind == "float":
        return v.check_number(name, value)
    if kind == "boolean":
        return v.check_bool(name, value)
    if kind == "choice" and type(value) is not type(knob["values"][0]):
        raise TypeError(
            f"`{name}` takes values like {knob['values']!r}. Received: {name}={value!r}"
        )
    if not isinstance(value, (str, int, float, bool)):
        raise TypeError(
            f"`{name}` must be fixed to a str, int, float or bool. Received: {name}={value!r}"
        )
    return value


def prune(knobs):
    """Drop the children that their parent can no longer activate; trim their conditions."""
    by_name = {}
    result = []
    for knob in knobs:
        parent = knob["parent"]
        if parent is not None:
            options = parent_options(by_name[parent["name"]])
            if options is not None:
                live = [x for x in parent["values"] if x in options]
                if not live and knob["type"] != "dropped":
                    knob = constant(knob, "dropped", knob["default"])
                elif live:
                    knob = dict(knob, parent={"name": parent["name"], "values": live})
        by_name[knob["name"]] = knob
        result.append(knob)
    return result

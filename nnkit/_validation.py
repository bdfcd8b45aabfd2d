"""Argument checks shared by every nnkit component.

Each helper returns the (possibly normalised) value or raises a
``TypeError``/``ValueError`` that names the argument, echoes what was
received and says what was expected, in the Keras style::

    `total_steps` must be > 0. Received: total_steps=0
"""

import math
import numbers
import os

_PLAIN_TYPES = (str, int, float, bool, type(None))

#: Largest magnitude an integer argument may have. Steps, sizes and counts
#: meet float arithmetic (``step / step_size``, cosine cycles, ...), and a
#: float64 holds every integer only up to 2**53; beyond it a schedule
#: computes NaN or overflows at its first step, far from the constructor.
MAX_INT = 2**53
#: Largest magnitude of a seed: seeds never meet float arithmetic, and Keras,
#: TensorFlow and numpy take any int64.
SEED_LIMIT = 2**63 - 1
#: Largest magnitude of a real-number argument: the largest float32. nnkit's
#: hyperparameters become float32 tensors, where a larger value is inf (a
#: learning rate of 1e308 gives inf and then NaN weights, far from the call).
FLOAT32_MAX = 3.4028234663852886e38


def _received(name, value):
    return f"Received: {name}={value!r}"


def _is_real(value):
    # bool is an int subclass; a flag is never a number here.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def plain_number(value):
    """Return a numpy scalar or 0-d numpy array as a Python scalar, else ``value``.

    ``np.float32(0.5)`` gives ``0.5``, ``np.array(3)`` gives ``3`` and
    ``np.bool_(True)`` gives ``True`` (which the number checks then reject);
    anything else is returned unchanged. numpy is not imported here.
    """
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        item = getattr(value, "item", None)
        if callable(item):
            result = item()
            if isinstance(result, (bool, int, float)):
                return result
    return value


def check_number(
    name,
    value,
    *,
    minimum=None,
    maximum=None,
    min_inclusive=True,
    max_inclusive=True,
    limit=FLOAT32_MAX,
):
    """Return ``value`` as a finite Python float within the given bounds.

    numpy scalars and 0-d numpy arrays are accepted (see `plain_number`).
    ``limit`` caps the magnitude (default: the largest float32, see
    ``FLOAT32_MAX``; ``None`` for no cap).
    """
    received = value
    value = plain_number(value)
    if not _is_real(value):
        raise TypeError(
            f"`{name}` must be a real number (int or float), not "
            f"{type(received).__name__}. {_received(name, received)}"
        )
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float, e.g. 10**400
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number. {_received(name, received)}")
    if limit is not None and abs(value) > limit:
        raise ValueError(
            f"`{name}` must be at most {limit:.7g} in magnitude (nnkit computes in float32, "
            f"where a larger number is inf). {_received(name, received)}"
        )
    if minimum is not None:
        if min_inclusive and value < minimum:
            raise ValueError(f"`{name}` must be >= {minimum}. {_received(name, value)}")
        if not min_inclusive and value <= minimum:
            raise ValueError(f"`{name}` must be > {minimum}. {_received(name, value)}")
    if maximum is not None:
        if max_inclusive and value > maximum:
            raise ValueError(f"`{name}` must be <= {maximum}. {_received(name, value)}")
        if not max_inclusive and value >= maximum:
            raise ValueError(f"`{name}` must be < {maximum}. {_received(name, value)}")
    return value


def check_positive_number(name, value):
    """A finite float > 0."""
    return check_number(name, value, minimum=0.0, min_inclusive=False)


def check_non_negative_number(name, value):
    """A finite float >= 0."""
    return check_number(name, value, minimum=0.0)


def check_optional_number(name, value, **bounds):
    """``None`` or a number accepted by `check_number`."""
    return None if value is None else check_number(name, value, **bounds)


def check_learning_rate(learning_rate, *, optional=False, allow_zero=False, allow_callable=True):
    """A learning rate, as every nnkit component takes one (the one validator for it).

    Accepts a ``keras.optimizers.schedules.LearningRateSchedule`` (any nnkit
    schedule) or its serialized config (a dict, as in an optimizer's
    config, deserialized here), a number > 0 (>= 0 with ``allow_zero``), a
    callable (unless ``allow_callable=False``; Keras's optimizers take one)
    and, with ``optional``, ``None``.
    """
    import keras

    schedule = keras.optimizers.schedules.LearningRateSchedule
    if learning_rate is None and optional:
        return None
    if isinstance(learning_rate, dict):
        # A serialized schedule, as in an optimizer's config.
        try:
            learning_rate = keras.optimizers.schedules.deserialize(learning_rate)
        except (TypeError, ValueError, KeyError) as error:
            raise TypeError(
                "`learning_rate` must be a number, a LearningRateSchedule or a serialized "
                f"schedule (a dict with 'class_name' and 'config'), not an other dict "
                f"({error}). {_received('learning_rate', learning_rate)}"
            ) from None
    if isinstance(learning_rate, schedule):
        return learning_rate
    if allow_callable and callable(learning_rate):
        return learning_rate
    if _is_real(plain_number(learning_rate)):
        return check_number("learning_rate", learning_rate, minimum=0.0, min_inclusive=allow_zero)
    expected = ["None"] if optional else []
    expected += ["a number", "a keras.optimizers.schedules.LearningRateSchedule"]
    expected += ["a callable"] if allow_callable else []
    raise TypeError(
        f"`learning_rate` must be {', '.join(expected[:-1])} or {expected[-1]} (e.g. an "
        f"nnkit.schedules.CosineAnnealing). {_received('learning_rate', learning_rate)}"
    )


def check_int(name, value, *, minimum=None, maximum=None, limit=MAX_INT):
    """Return ``value`` as a Python int within the given (inclusive) bounds.

    Integral floats such as ``1000.0`` are accepted (configs written by JSON
    tools often contain them), as are numpy scalars and 0-d numpy arrays;
    ``1.5``, bools, NaN, inf and magnitudes above `MAX_INT` (``2**53``,
    where float step arithmetic stops being exact) are not. ``limit`` widens
    that magnitude cap for integers that never meet float arithmetic (a seed
    passes ``limit=SEED_LIMIT``).
    """
    received = value
    value = plain_number(value)
    if isinstance(value, bool) or not _is_real(value):
        raise TypeError(
            f"`{name}` must be an integer, not {type(received).__name__}. "
            f"{_received(name, received)}"
        )
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(value) or float(value) != int(value):
            raise ValueError(f"`{name}` must be a whole number. {_received(name, received)}")
    result = int(value)
    if abs(result) > limit:
        reason = (
            f"2**53 = {MAX_INT} in magnitude (larger integers break the float "
            "arithmetic of steps and counts)"
            if limit == MAX_INT
            else f"{limit} in magnitude"
        )
        raise ValueError(f"`{name}` must be at most {reason}. {_received(name, received)}")
    if minimum is not None and result < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}. {_received(name, received)}")
    if maximum is not None and result > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}. {_received(name, received)}")
    return result


def check_positive_int(name, value):
    """An int >= 1."""
    return check_int(name, value, minimum=1)


def check_non_negative_int(name, value):
    """An int >= 0."""
    return check_int(name, value, minimum=0)


def check_optional_int(name, value, **bounds):
    """``None`` or an int accepted by `check_int`."""
    return None if value is None else check_int(name, value, **bounds)


def check_bool(name, value):
    """A real ``bool`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be True or False, not {type(value).__name__}. {_received(name, value)}"
        )
    return value


def check_one_of(name, value, choices, *, allow_none=False):
    """One of a fixed set of string options (or ``None`` with ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        if allow_none:
            options += " or None"
        raise ValueError(f"`{name}` must be one of {options}. {_received(name, value)}")
    return value


def check_str(name, value, *, allow_empty=False):
    """A string (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be a string, not {type(value).__name__}. {_received(name, value)}"
        )
    if not allow_empty and not value:
        raise ValueError(f"`{name}` must be a non-empty string. {_received(name, value)}")
    return value


def check_optional_path(name, value):
    """``None``, or a path (``str`` or ``os.PathLike``) returned as a non-empty ``str``."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"`{name}` must be a path (str or os.PathLike) or None, not "
            f"{type(value).__name__}. {_received(name, value)}"
        )
    return check_str(name, os.fspath(value))


def _rank(value):
    """The number of dimensions of an array or tensor, ``None`` for anything else."""
    shape = getattr(value, "shape", None)
    if shape is None or isinstance(value, type):
        return None
    try:
        return len(tuple(shape))
    except (TypeError, ValueError):  # a tensor of unknown rank
        return None


def check_sequence(name, value, expected):
    """``value`` as a list, for a list argument: not a string, mapping, set or scalar (tensor).

    ``expected`` describes the list for the message ("a list of integers").
    A 0-d array or tensor (``tf.constant(3)``) is a scalar, not a list.
    """
    if (
        isinstance(value, (str, bytes, dict, set, frozenset))
        or not hasattr(value, "__iter__")
        or _rank(value) == 0
    ):
        raise TypeError(
            f"`{name}` must be {expected}, not {type(value).__name__}. {_received(name, value)}"
        )
    return list(value)


def check_int_list(name, values, *, minimum=None):
    """A non-empty list (any order) of ints >= ``minimum``, e.g. layer widths."""
    values = check_sequence(name, values, "a list of integers")
    if not values:
        raise ValueError(f"`{name}` must not be empty. {_received(name, values)}")
    return [check_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values)]


def check_increasing_ints(name, values, *, minimum=0):
    """A non-empty list of strictly increasing ints >= ``minimum``."""
    result = check_int_list(name, values, minimum=minimum)
    for previous, current in zip(result, result[1:], strict=False):
        if current <= previous:
            raise ValueError(
                f"`{name}` must be strictly increasing. {_received(name, list(values))}"
            )
    return result


def check_instance(name, value, cls, expected):
    """``isinstance(value, cls)``; ``expected`` describes ``cls`` for the message."""
    if not isinstance(value, cls):
        raise TypeError(
            f"`{name}` must be {expected}, not {type(value).__name__}. {_received(name, value)}"
        )
    return value


def check_json_plain(name, value):
    """A value made only of JSON types (used for configs and callback state)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"`{name}` keys must be strings. {_received(name, value)}")
            check_json_plain(f"{name}[{k!r}]", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_json_plain(f"{name}[{i}]", v)
    elif not isinstance(value, _PLAIN_TYPES):
        raise TypeError(
            f"`{name}` must hold only JSON types, found {type(value).__name__}. "
            f"{_received(name, value)}"
        )
    return value


def _is_data(value, top=True):
    # Arrays, tensors (numpy, TensorFlow, JAX, Keras), datasets, generators,
    # Keras PyDatasets and nested lists/tuples/dicts of numbers or arrays (a
    # lone bool is a flag passed by mistake; bools inside a list are data).
    if value is None or isinstance(value, (str, bytes)) or (top and isinstance(value, bool)):
        return False
    if isinstance(value, numbers.Number):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_data(item, top=False) for item in value)
    if isinstance(value, dict):
        return all(_is_data(item, top=False) for item in value.values())
    return any(
        hasattr(value, attribute)
        for attribute in ("shape", "__array__", "__iter__", "__getitem__", "element_spec")
    )


def check_data(name, value, *, allow_none=False):
    """Arrays, tensors or a dataset (or a nest of them); not ``None``, strings or other objects."""
    if value is None and allow_none:
        return value
    if not _is_data(value):
        raise TypeError(
            f"`{name}` must be an array, a tensor or a dataset (numpy, TensorFlow, JAX, "
            f"tf.data), not {type(value).__name__}. {_received(name, value)}"
        )
    return value


def _leaves(value):
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def check_batches(name, value, *, allow_none=False):
    """Model inputs to cut into batches: arrays with a batch dimension, a nest of them, or batches.

    Accepted: an array or tensor of rank >= 1 (numpy, TensorFlow, JAX), a
    list/tuple/dict of such arrays with the same number of rows, or
    something that yields batches (a ``tf.data.Dataset``, a generator or
    iterator, a ``keras.utils.PyDataset``). Numbers, strings, 0-d arrays and
    nests holding them are refused (Keras would read ``[1, 2]`` as two
    inputs of one scalar each).
    """
    if value is None and allow_none:
        return value
    expected = (
        "an array or tensor with a batch dimension, a list/tuple/dict of such arrays, or "
        "a tf.data.Dataset, generator or keras.utils.PyDataset of batches"
    )
    if isinstance(value, (str, bytes)) or value is None or isinstance(value, numbers.Number):
        raise TypeError(
            f"`{name}` must be {expected}, not {type(value).__name__}. {_received(name, value)}"
        )
    if (
        hasattr(value, "element_spec")
        or hasattr(value, "__next__")
        or hasattr(value, "num_batches")
    ):
        return value
    leaves = _leaves(value)
    if not leaves:
        raise ValueError(f"`{name}` must hold at least one array. {_received(name, value)}")
    rows = set()
    for leaf in leaves:
        rank = _rank(leaf)
        if not rank:
            raise TypeError(
                f"`{name}` must be {expected}; it holds {type(leaf).__name__} "
                f"{leaf!r}{' (a scalar)' if rank == 0 else ''}. {_received(name, value)}"
            )
        rows.add(tuple(leaf.shape)[0])
    if len(rows) > 1:
        raise ValueError(
            f"`{name}`'s arrays must all have the same number of rows (their first "
            f"dimension); found {sorted(rows, key=str)}. {_received(name, value)}"
        )
    return value


def check_array(name, value, *, min_ndim=1):
    """An array-like of numbers (numpy, tensor or nested lists) of rank >= ``min_ndim``.

    Returns ``value`` unchanged; the caller converts it.
    """
    rank = _rank(value)
    if rank is None and isinstance(value, (list, tuple)):
        depth, item = 0, value
        while isinstance(item, (list, tuple)) and item:
            depth, item = depth + 1, item[0]
        if not all(_is_real(leaf) for leaf in _leaves(value)):
            raise TypeError(f"`{name}` must be an array of numbers. {_received(name, value)}")
        rank = depth if value else 1
    if rank is None:
        raise TypeError(
            f"`{name}` must be an array (numpy, a tensor or a nested list of numbers), not "
            f"{type(value).__name__}. {_received(name, value)}"
        )
    if rank < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimension(s), one row per example; got "
            f"{rank}. {_received(name, value)}"
        )
    return value


def check_path(name, value):
    """A path (``str`` or ``os.PathLike``) returned as a non-empty ``str``."""
    if value is None:
        raise TypeError(f"`{name}` must be a path (str or os.PathLike). {_received(name, value)}")
    return check_optional_path(name, value)

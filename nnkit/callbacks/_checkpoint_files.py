"""The files of ``ModelCheckpoint``: file names, retention, and the sidecar that holds its state.

* the argument checks of ``filepath``, ``save_freq`` and ``keep_last``/``keep_best``;
* ``format_path``: Keras's file naming (``{epoch}`` counts from 1, ``{batch}``
  too, any logged key by name).
* ``to_delete``: the retention rule (pure): which of the files written so far
  ``keep_last``/``keep_best`` let go; never the current best.
* the sidecar, ``.<pattern>.nnkit-checkpoint.json`` in the first directory of
  ``filepath`` without a formatting field: the callback's state as JSON,
  written atomically after every save and every deletion, so a run resumed
  without a ``BackupAndRestore`` backup (``fit(initial_epoch=k)``) continues
  from the same best.
"""

import json
import math
import os
import re
import warnings

from nnkit import _io
from nnkit import _validation as v

FORMAT = "nnkit.ModelCheckpoint/1"
_FIELD = re.compile(r"\{[^{}]*\}")


def check_save_freq(save_freq):
    """``"epoch"`` or an int ``>= 1``."""
    if save_freq == "epoch":
        return save_freq
    if isinstance(save_freq, str):
        raise ValueError(
            "Unrecognized save_freq: `save_freq` must be 'epoch' or an int >= 1 (save every "
            f"that many batches). Received: save_freq={save_freq!r}"
        )
    return v.check_positive_int("save_freq", save_freq)


def check_optional_keep(name, value):
    """``None`` or an int ``>= 1``."""
    return None if value is None else v.check_positive_int(name, value)


def check_filepath(filepath, save_weights_only):
    """Keras's rule: ``.weights.h5`` for weights, else ``.keras`` (or the legacy ``.h5``)."""
    if save_weights_only:
        if not filepath.endswith(".weights.h5"):
            raise ValueError(
                "With save_weights_only=True, `filepath` must end in `.weights.h5` (Keras "
                f"weights format). Received: filepath={filepath!r}"
            )
    elif not filepath.endswith((".keras", ".h5")):
        raise ValueError(
            "`filepath` must end in `.keras` (Keras model format; `.h5` is the legacy "
            "one), or pass save_weights_only=True with a `.weights.h5` path. Received: "
            f"filepath={filepath!r}"
        )


def has_field(filepath):
    """Whether ``filepath`` has a formatting field (``{epoch}``, ``{val_loss:.2f}``, ...)."""
    return bool(_FIELD.search(filepath))


def format_path(filepath, epoch, batch, logs):
    """``filepath`` filled in as Keras does: ``epoch``/``batch`` count from 1, logs by name."""
    logs = dict(logs or {})
    try:
        if batch is None or "batch" in logs:
            return filepath.format(epoch=epoch + 1, **logs)
        return filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
    except KeyError as error:
        raise KeyError(
            f'Failed to format this callback filepath: "{filepath}". Reason: {error}. The '
            f"fields must be epoch, batch or logged keys: {sorted(logs)}"
        ) from None


def sidecar_path(filepath):
    """Where the sidecar of the pattern ``filepath`` lives (see the module documentation)."""
    head, tail = os.path.split(filepath)
    parts = []
    while has_field(head):  # a field in a directory name: go up to a fixed directory
        head, part = os.path.split(head)
        parts.insert(0, part)
    pattern = "_".join([*parts, tail])
    name = re.sub(r"[{}:/\\\s]", "_", pattern)
    return (
        _io.join(head, f".{name}.nnkit-checkpoint.json")
        if head
        else f".{name}.nnkit-checkpoint.json"
    )


def write_sidecar(filepath, monitor, state):
    """Write ``state`` to the sidecar of ``filepath`` atomically."""
    path = sidecar_path(filepath)
    directory = os.path.dirname(path)
    if directory:
        _io.makedirs(directory)
    payload = {"format": FORMAT, "filepath": filepath, "monitor": monitor, "state": state}
    _io.atomic_write(path, json.dumps(payload, indent=1))


def read_sidecar(filepath, monitor):
    """The state in the sidecar of ``filepath``, or ``None`` (none, or one that does not fit).

    A sidecar that cannot be read, or was written for another ``filepath`` or
    ``monitor``, is ignored with a warning (and overwritten at the next save).
    """
    path = sidecar_path(filepath)
    if not _io.exists(path):
        return None
    try:
        payload = json.loads(_io.read_bytes(path).decode("utf-8"))
        ok = payload.get("format") == FORMAT and isinstance(payload.get("state"), dict)
    except (ValueError, UnicodeDecodeError, AttributeError):
        ok = False
    if not ok:
        why = "it is not a ModelCheckpoint sidecar (unreadable or another format)"
    elif payload.get("filepath") != filepath or payload.get("monitor") != monitor:
        ok = False
        why = (
            f"it was written for filepath={payload.get('filepath')!r}, "
            f"monitor={payload.get('monitor')!r}"
        )
    if not ok:
        warnings.warn(
            f"ModelCheckpoint ignores {path!r}: {why}. The run starts with no best; the file "
            f"is overwritten at the next save. Received: filepath={filepath!r}, "
            f"monitor={monitor!r}",
            stacklevel=3,
        )
        return None
    return payload["state"]


def _ranked(records, direction):
    finite = [r for r in records if r["value"] is not None and math.isfinite(r["value"])]
    return sorted(finite, key=lambda r: r["value"], reverse=direction == "max")


def to_delete(records, *, best_path, keep_last, keep_best, direction):
    """Paths of ``records`` (oldest first) that retention lets go; never ``best_path``.

    A file is kept when it is the current best, one of the ``keep_last``
    most recent, or one of the ``keep_best`` with the best monitored values
    (ties: the older first). ``None`` for both keeps everything, as Keras.
    """
    if keep_last is None and keep_best is None:
        return []
    keep = {best_path}
    if keep_last is not None:
        keep.update(r["path"] for r in records[-keep_last:])
    if keep_best is not None:
        keep.update(r["path"] for r in _ranked(records, direction)[:keep_best])
    return [r["path"] for r in records if r["path"] not in keep]


def record(record):
    """A saved-file record of a state, checked and with plain types."""
    if not isinstance(record, dict) or set(record) != {"path", "epoch", "batch", "value"}:
        raise TypeError(f"a saved-file record must have path, epoch, batch, value: {record!r}")
    value = record["value"]
    return {
        "path": str(record["path"]),
        "epoch": int(record["epoch"]),
        "batch": None if record["batch"] is None else int(record["batch"]),
        "value": None if value is None else float(value),
    }


def before_epoch(state, epoch, initial_best):
    """``state`` (a sidecar's) as it was before ``epoch``: later records dropped, best recomputed.

    The epochs from ``epoch`` on run again in the resumed run, so their files
    no longer count; if the best was one of them, the best of the rest (or
    ``initial_best`` when none is left) takes its place.
    """
    try:
        kept = [r for r in state["saved"] if record(r)["epoch"] < epoch]
        best_epoch = state["best_epoch"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"the sidecar state is damaged ({error!r}).") from None
    state = {**state, "saved": kept}
    if best_epoch is not None and best_epoch >= epoch:
        ranked = _ranked([record(r) for r in kept], state.get("direction") or "min")
        best = ranked[0] if ranked else None
        state["best"] = initial_best if best is None else best["value"]
        state["best_epoch"] = None if best is None else best["epoch"]
        state["best_path"] = None if best is None else best["path"]
    return state

"""The files of a ``BackupAndRestore`` backup: how one is written atomically and read back.

A backup is one *generation* ``g`` of files in ``backup_dir``, committed by
the manifest written last:

- ``backup-<g>.weights.h5``: ``model.save_weights`` (the model's weights and
  the optimizer's variables, Keras's public format);
- ``backup-<g>.npz``: every array of the backup (callback states' arrays,
  the random-number state), or none;
- ``callback_state.json``: the manifest (``format_version`` 2): the epoch and
  batch the backup resumes at, both file names with their SHA-256, each
  callback's state as JSON, and the random-number state.

Every file is written with ``nnkit._io`` (temporary file, ``fsync``,
rename); the weights and arrays of a generation have names no earlier
generation used, and the manifest's rename is the commit, so a process
killed at any moment leaves the previous backup intact and readable. After
the commit the files no manifest names any more are deleted. With
``double_checkpoint`` the previous manifest is kept as
``callback_state.json.bkp`` (and its generation's files with it), the
fallback when the latest backup cannot be read. For Keras's tools,
``latest.weights.h5`` (another name of the latest weights file) and
``training_metadata.json`` (``{"epoch", "batch"}``) are written after the
commit; nnkit does not read them.

Format 1 (nnkit 0.1: Keras's ``latest.weights.h5`` and
``training_metadata.json`` plus ``callback_state.json``/``.npz`` with
``.bkp`` copies) is still read.
"""

import dataclasses
import hashlib
import io
import json
import os
import random
import re
import tempfile

import numpy as np

from nnkit import _io
from nnkit import _validation as v
from nnkit._arrays import quiet_keras_numpy2, to_numpy

FORMAT_VERSION = 2
MANIFEST = "callback_state.json"
PREVIOUS = f"{MANIFEST}.bkp"
KERAS_WEIGHTS = "latest.weights.h5"
KERAS_METADATA = "training_metadata.json"
_V1_ARRAYS = "callback_state.npz"
_GENERATION = re.compile(r"^backup-(\d+)\.(weights\.h5|npz)$")

# In the JSON, {"__ndarrays__": ["a0", "a1"]} stands for a list of arrays and
# {"__ndarray__": "a2"} for one array, stored under those names in the .npz.
_LIST_TAG = "__ndarrays__"
_ARRAY_TAG = "__ndarray__"

START_AFRESH = (
    "To start afresh instead, delete that directory or pass another `backup_dir` "
    "(nnkit leaves the backup as it is)."
)


class BackupError(ValueError):
    """A backup file is missing, unreadable, damaged, or does not fit this run."""


@dataclasses.dataclass
class Backup:
    """A backup read from disk (not yet applied)."""

    directory: str
    manifest: str  # the manifest file it was read from
    epoch: int
    batch: int
    weights: str  # path of the weights file to load
    states: dict  # {callback key: state}
    rng: dict | None  # random-number state, or None (format 1)
    generation: int | None  # None for format 1
    arrays: dict = dataclasses.field(default_factory=dict)  # the .npz arrays, by name
    temporary: str | None = None  # a directory to delete once the weights are loaded


# -- encoding -------------------------------------------------------------------


def _is_array_list(value):
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(a, np.ndarray) for a in value)
    )


def encode_states(states, arrays):
    """``{key: state}`` as JSON-plain dicts; arrays go into ``arrays`` (``{name: array}``)."""
    plain = {}
    for key, state in states.items():
        v.check_instance(f"{key}.get_state()", state, dict, "a dict")
        entry = {}
        for field, value in state.items():
            if isinstance(value, np.ndarray):
                entry[field] = {_ARRAY_TAG: _add(arrays, value)}
            elif _is_array_list(value):
                entry[field] = {_LIST_TAG: [_add(arrays, a) for a in value]}
            else:
                entry[field] = v.check_json_plain(f"{key}.get_state()[{field!r}]", value)
        plain[key] = entry
    return plain


def _add(arrays, value):
    name = f"a{len(arrays)}"
    arrays[name] = np.asarray(value)
    return name


def decode_states(plain, arrays):
    states = {}
    for key, entry in plain.items():
        state = {}
        for field, value in entry.items():
            if isinstance(value, dict) and set(value) == {_LIST_TAG}:
                value = [arrays[name] for name in value[_LIST_TAG]]
            elif isinstance(value, dict) and set(value) == {_ARRAY_TAG}:
                value = arrays[value[_ARRAY_TAG]]
            state[field] = value
        states[key] = state
    return states


def rng_state(model, arrays):
    """The random-number state a resumed run needs, JSON-plain (arrays into ``arrays``).

    numpy's and Python's global generators (the JAX backend shuffles arrays
    with numpy's) and every ``keras.random.SeedGenerator`` state of the model
    (dropout masks), which ``save_weights`` does not hold.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    weights = {id(w) for w in model.weights}
    generators = {
        w.path: _add(arrays, np.array(to_numpy(w)))
        for w in model.non_trainable_variables
        if id(w) not in weights
    }
    return {
        "numpy": {
            "kind": kind,
            "keys": _add(arrays, keys),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "seed_generators": generators,
    }


def restore_rng(model, rng, arrays):
    """Apply a state from ``rng_state`` (seed generators matched by path)."""
    if not rng:
        return
    state = rng["numpy"]
    np.random.set_state(
        (
            state["kind"],
            arrays[state["keys"]],
            state["pos"],
            state["has_gauss"],
            state["cached_gaussian"],
        )
    )
    python = rng["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    saved = rng.get("seed_generators", {})
    for w in model.non_trainable_variables:
        name = saved.get(w.path)
        if name is not None and tuple(arrays[name].shape) == tuple(w.shape):
            w.assign(arrays[name])


# -- writing ----------------------------------------------------------------------


def generation_files(directory):
    """``{generation: [names]}`` of the generation files in ``directory``."""
    found = {}
    for name in _io.listdir(directory):
        match = _GENERATION.match(name)
        if match:
            found.setdefault(int(match.group(1)), []).append(name)
    return found


def write(directory, *, model, epoch, batch, states, keep_previous, keep_generations=()):
    """Write a backup of ``model`` and ``states`` at ``(epoch, batch)``; return its generation.

    ``keep_generations`` are generations never deleted (unreadable ones this
    run fell back from).
    """
    _io.makedirs(directory)
    generations = generation_files(directory)
    previous = _read_manifest_quietly(_io.join(directory, MANIFEST))
    last = max([*generations, (previous or {}).get("generation") or 0], default=0)
    generation = last + 1
    stem = f"backup-{generation:06d}"
    weights_name = f"{stem}.weights.h5"
    weights_path = _io.join(directory, weights_name)
    with quiet_keras_numpy2():
        model.save_weights(weights_path, overwrite=True)
    _io.sync_file(weights_path)
    arrays = {}
    plain = encode_states(states, arrays)
    rng = rng_state(model, arrays)
    arrays_name = digest = None
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        arrays_name = f"{stem}.npz"
        data = buffer.getvalue()
        _io.atomic_write(_io.join(directory, arrays_name), data)
        digest = hashlib.sha256(data).hexdigest()  # of the bytes written: no read-back
    manifest = {
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "batch": int(batch),
        "generation": generation,
        "weights": weights_name,
        "weights_sha256": _io.sha256(weights_path),
        "arrays": arrays_name,
        "arrays_sha256": digest,
        "callbacks": plain,
        "rng": rng,
    }
    manifest_path = _io.join(directory, MANIFEST)
    if keep_previous and previous is not None and previous.get("format_version") == FORMAT_VERSION:
        _io.atomic_copy(manifest_path, _io.join(directory, PREVIOUS))
    _io.atomic_write(manifest_path, json.dumps(manifest, indent=1))  # the commit
    # For Keras's tools; nnkit reads only the manifest.
    _io.atomic_link(weights_path, _io.join(directory, KERAS_WEIGHTS))
    _io.atomic_write(
        _io.join(directory, KERAS_METADATA), json.dumps({"epoch": epoch, "batch": batch})
    )
    _collect(directory, keep_previous=keep_previous, keep=set(keep_generations))
    return generation


def _collect(directory, *, keep_previous, keep):
    """Delete the generation files no manifest names (and format-1 leftovers)."""
    wanted = set(keep)
    for name in (MANIFEST, PREVIOUS) if keep_previous else (MANIFEST,):
        manifest = _read_manifest_quietly(_io.join(directory, name))
        if manifest is not None and manifest.get("format_version") == FORMAT_VERSION:
            wanted.add(manifest["generation"])
    for generation, names in generation_files(directory).items():
        if generation not in wanted:
            for name in names:
                _io.remove(_io.join(directory, name))
    if not keep_previous:
        _io.remove(_io.join(directory, PREVIOUS))
    for name in (_V1_ARRAYS, f"{_V1_ARRAYS}.bkp", f"{KERAS_WEIGHTS}.bkp", f"{KERAS_METADATA}.bkp"):
        _io.remove(_io.join(directory, name))


def _read_manifest_quietly(path):
    try:
        return json.loads(_io.read_bytes(path).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


# -- reading ----------------------------------------------------------------------


def has_backup(directory):
    """Whether ``directory`` holds any backup file (nnkit's or Keras's)."""
    names = set(_io.listdir(directory))
    return bool(names & {MANIFEST, PREVIOUS, KERAS_WEIGHTS, KERAS_METADATA})


def read(directory, *, previous=False):
    """The backup in ``directory`` (its previous one with ``previous``), or ``None`` if there is none.

    Raises ``BackupError`` naming the file when a file is missing,
    unreadable or damaged.
    """
    manifest_path = _io.join(directory, PREVIOUS if previous else MANIFEST)
    if not _io.exists(manifest_path):
        if previous:
            raise BackupError(f"there is no previous backup ({manifest_path!r} is missing).")
        if _io.exists(_io.join(directory, KERAS_WEIGHTS)) or _io.exists(
            _io.join(directory, KERAS_METADATA)
        ):
            raise BackupError(
                f"{directory!r} holds Keras's backup files but no {MANIFEST!r}: a backup "
                "written by keras.callbacks.BackupAndRestore (or by an interrupted first "
                "save), which has no callback state to resume consistently."
            )
        return None
    data = _read_file(manifest_path)
    try:
        manifest = json.loads(data.decode("utf-8"))
        version = manifest["format_version"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        kind = "empty" if not data.strip() else f"not a backup manifest ({error!r})"
        raise BackupError(f"{manifest_path!r} is {kind}.") from None
    if version == 1:
        return _read_v1(directory, manifest_path, manifest, previous=previous)
    if version != FORMAT_VERSION:
        raise BackupError(
            f"{manifest_path!r} has format_version={version!r}; this nnkit reads 1 and "
            f"{FORMAT_VERSION} (a backup from a newer nnkit?)."
        )
    try:
        epoch, batch = int(manifest["epoch"]), int(manifest["batch"])
        weights = _io.join(directory, manifest["weights"])
        plain = manifest["callbacks"]
        rng = manifest.get("rng")
        generation = int(manifest["generation"])
        arrays_name, arrays_digest = manifest["arrays"], manifest["arrays_sha256"]
        weights_digest = manifest["weights_sha256"]
    except (KeyError, TypeError, ValueError) as error:
        raise BackupError(f"{manifest_path!r} is malformed (missing {error}).") from None
    _check_digest(weights, weights_digest, manifest_path)
    arrays = {}
    if arrays_name is not None:
        path = _io.join(directory, arrays_name)
        _check_digest(path, arrays_digest, manifest_path)
        arrays = _load_npz(path)
    try:
        states = decode_states(plain, arrays)
    except (AttributeError, KeyError, TypeError) as error:
        raise BackupError(f"{manifest_path!r} is malformed ({error!r}).") from None
    return Backup(directory, manifest_path, epoch, batch, weights, states, rng, generation, arrays)


def _read_file(path):
    try:
        return _io.read_bytes(path)
    except OSError as error:
        raise BackupError(f"{path!r} cannot be read ({error}).") from None


def _check_digest(path, digest, manifest_path):
    if not _io.exists(path):
        raise BackupError(f"{path!r}, named by {manifest_path!r}, is missing.")
    try:
        actual = _io.sha256(path)
    except OSError as error:
        raise BackupError(f"{path!r} cannot be read ({error}).") from None
    if actual != digest:
        raise BackupError(
            f"{path!r} is damaged: its SHA-256 differs from the one {manifest_path!r} "
            "recorded (truncated or overwritten since)."
        )


def _load_npz(path):
    try:
        with np.load(io.BytesIO(_io.read_bytes(path)), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as error:
        raise BackupError(f"{path!r} is not a readable array file ({error}).") from None


def _read_v1(directory, manifest_path, document, *, previous):
    """A format-1 backup (nnkit 0.1), optionally its ``.bkp`` files."""
    suffix = ".bkp" if previous else ""
    weights = _io.join(directory, KERAS_WEIGHTS) + suffix
    metadata_path = _io.join(directory, KERAS_METADATA) + suffix
    if not _io.exists(metadata_path) or not _io.exists(weights):
        raise BackupError(f"{metadata_path!r} or {weights!r} is missing (an interrupted save).")
    try:
        metadata = json.loads(_read_file(metadata_path).decode("utf-8"))
        saved_at = (metadata["epoch"], metadata.get("batch", 0))
        position = (document["epoch"], document["batch"])
        plain, digest = document["callbacks"], document["arrays_sha256"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise BackupError(
            f"{manifest_path!r} or {metadata_path!r} is unreadable ({error!r})."
        ) from None
    if position != saved_at:
        raise BackupError(
            f"{manifest_path!r} was written for epoch/batch {position}, but the weights are "
            f"from {saved_at} (an interrupted save)."
        )
    arrays = {}
    if digest is not None:
        path = _io.join(directory, _V1_ARRAYS) + suffix
        _check_digest(path, digest, manifest_path)
        arrays = _load_npz(path)
    try:
        states = decode_states(plain, arrays)
    except (AttributeError, KeyError, TypeError) as error:
        raise BackupError(f"{manifest_path!r} is malformed ({error!r}).") from None
    temporary = None
    if suffix:
        # Keras loads weights only from a file named *.weights.h5: load a local copy.
        temporary = tempfile.mkdtemp(prefix="nnkit-")
        local = os.path.join(temporary, KERAS_WEIGHTS)
        _io.atomic_copy(weights, local)
        weights = local
    epoch, batch = position
    return Backup(
        directory, manifest_path, epoch, batch, weights, states, None, None, arrays, temporary
    )


def set_aside(directory, generation):
    """Rename the manifest of an unreadable backup (never delete it); return the new name."""
    path = _io.join(directory, MANIFEST)
    if not _io.exists(path):
        return None
    aside = f"{path}.unreadable-{generation if generation is not None else 0}"
    _io.rename(path, aside)
    return aside

"""The one way nnkit writes a file: atomically, durably, and leaving nothing behind on failure.

Every file nnkit writes (backups, study files, reports, curves) goes through
``atomic_write`` (or ``atomic_save``, for writers that take a file name):

1. the bytes go to a temporary file in the destination's directory (same file
   system, so the rename below is atomic);
2. the temporary file is flushed and ``fsync``-ed;
3. ``os.replace`` puts it in place: a reader sees the old file or the new one,
   never a mix, and a process killed at any point leaves the old file intact;
4. the directory is ``fsync``-ed, so the rename itself survives a power cut;
5. on any failure (including a ``KeyboardInterrupt``) the temporary file is
   removed and the error propagates.

Remote paths (``gs://``, ``s3://``, ... anything with ``://``) have no atomic
rename; they are written in one call through ``tf.io.gfile`` (TensorFlow is
imported only then), as Keras does for them.
"""

import contextlib
import hashlib
import os
import shutil
import tempfile

#: Prefix of the temporary files (hidden; ``leftovers`` finds them).
TEMP_PREFIX = ".nnkit-tmp-"


def is_remote(path):
    """Whether ``path`` is a URL-like remote path (``scheme://...``)."""
    return "://" in os.fspath(path)


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform or file system that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL on file systems without directory fsync
        pass
    finally:
        os.close(fd)


def atomic_write(path, data, *, encoding="utf-8"):
    """Write ``data`` (``bytes`` or ``str``) to ``path`` atomically; return ``path``.

    See the module documentation for the steps. The directory must exist.
    """
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode(encoding)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"`data` must be bytes or str. Received: data of type {type(data).__name__}"
        )
    if is_remote(path):
        with _gfile().GFile(path, "wb") as f:
            f.write(bytes(data))
        return path

    def write(name):
        with open(name, "wb") as f:
            f.write(data)

    return _replace(path, write, suffix=".part")


def atomic_save(path, save):
    """Have ``save(temporary_path)`` write a file by name, then put it at ``path`` atomically.

    For writers that take a file name (Keras's ``model.save``,
    ``model.save_weights``): the temporary file is in ``path``'s directory and
    ends like ``path`` (Keras checks the extension); then steps 2 to 5 of
    ``atomic_write``. Remote paths are written by ``save(path)`` directly.
    Returns ``path``.
    """
    path = os.fspath(path)
    if is_remote(path):
        save(path)
        return path
    name = os.path.basename(path)
    return _replace(path, save, suffix=name[name.index(".") :] if "." in name else "")


def _replace(path, write, *, suffix):
    """``write(temporary_path)`` beside ``path``, fsync, ``os.replace``, fsync the directory.

    Steps 1 to 5 of the module documentation; the temporary file is removed
    on any failure. Returns ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)
    return path


def atomic_copy(source, destination):
    """Copy ``source`` to ``destination`` with ``atomic_write``; return ``destination``."""
    return atomic_write(destination, read_bytes(source))


def read_bytes(path):
    """The contents of ``path`` (local or remote)."""
    path = os.fspath(path)
    if is_remote(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def join(directory, *names):
    """``directory/name/...``, with ``/`` for remote paths."""
    directory = os.fspath(directory)
    if is_remote(directory):
        return "/".join([directory.rstrip("/"), *names])
    return os.path.join(directory, *names)


def exists(path):
    """Whether ``path`` exists (local or remote)."""
    path = os.fspath(path)
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def makedirs(directory):
    """Create ``directory`` and its parents if they do not exist."""
    directory = os.fspath(directory)
    if is_remote(directory):
        _gfile().makedirs(directory)
    else:
        os.makedirs(directory, exist_ok=True)


def remove(path):
    """Remove the file ``path`` if it exists."""
    path = os.fspath(path)
    if is_remote(path):
        if _gfile().exists(path):
            _gfile().remove(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def rmtree(directory):
    """Remove ``directory`` and everything in it, if it exists."""
    directory = os.fspath(directory)
    if is_remote(directory):
        if _gfile().exists(directory):
            _gfile().rmtree(directory)
    else:
        if os.path.isdir(directory):
            shutil.rmtree(directory)


def sync_file(path):
    """``fsync`` a file written by someone else (e.g. Keras's ``save_weights``); local paths only."""
    path = os.fspath(path)
    if is_remote(path):
        return
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def sha256(path):
    """The SHA-256 of the file ``path``, as hex (read in 1 MiB blocks)."""
    path = os.fspath(path)
    digest = hashlib.sha256()
    if is_remote(path):
        digest.update(read_bytes(path))
        return digest.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_link(source, destination):
    """Make ``destination`` another name of the file ``source``, atomically (a copy when remote)."""
    source, destination = os.fspath(source), os.fspath(destination)
    if is_remote(destination):
        return atomic_copy(source, destination)
    directory = os.path.dirname(os.path.abspath(destination))
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{os.path.basename(destination)}")
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    try:
        os.link(source, tmp)
    except OSError:  # a file system without hard links
        return atomic_copy(source, destination)
    try:
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)
    return destination


def listdir(directory):
    """The names in ``directory`` (local or remote), ``[]`` when it does not exist."""
    directory = os.fspath(directory)
    if not exists(directory):
        return []
    if is_remote(directory):
        return [name.rstrip("/") for name in _gfile().listdir(directory)]
    return os.listdir(directory)


def rename(source, destination):
    """Rename ``source`` to ``destination`` (replacing it)."""
    source, destination = os.fspath(source), os.fspath(destination)
    if is_remote(source):
        _gfile().rename(source, destination, overwrite=True)
    else:
        os.replace(source, destination)


def leftovers(directory):
    """Temporary files of an interrupted ``atomic_write`` in ``directory`` (for tests)."""
    directory = os.fspath(directory)
    return sorted(name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX))

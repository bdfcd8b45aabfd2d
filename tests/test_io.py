"""nnkit._io: the one atomic write path (``atomic_write`` for bytes, ``atomic_save`` by name)."""

import os

import pytest

from nnkit import _io


def test_atomic_write_puts_the_bytes_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    assert _io.atomic_write(path, "héllo") == os.fspath(path)
    assert path.read_bytes() == "héllo".encode()
    _io.atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and _io.leftovers(tmp_path) == []


def test_atomic_write_refuses_other_data(tmp_path):
    with pytest.raises(TypeError, match="data of type int"):
        _io.atomic_write(tmp_path / "a", 3)


def test_atomic_save_gives_the_writer_a_temporary_with_the_extension(tmp_path):
    names = []

    def save(name):
        names.append(name)
        with open(name, "w") as f:
            f.write("weights")

    path = tmp_path / "model.weights.h5"
    _io.atomic_save(path, save)
    assert path.read_text() == "weights"
    (name,) = names
    assert os.path.dirname(name) == os.fspath(tmp_path)
    assert os.path.basename(name).startswith(_io.TEMP_PREFIX)
    assert name.endswith(".weights.h5") and _io.leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", ["write", "save"])
def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch, writer):
    path = tmp_path / "state.json"
    path.write_text("old")

    class Interrupted(BaseException):
        pass

    def save(name):
        with open(name, "w") as f:
            f.write("half")
        raise Interrupted

    def dying_replace(source, destination):
        raise Interrupted

    with pytest.raises(Interrupted):
        if writer == "save":
            _io.atomic_save(path, save)
        else:
            monkeypatch.setattr(os, "replace", dying_replace)
            _io.atomic_write(path, "new")
    assert path.read_text() == "old" and _io.leftovers(tmp_path) == []

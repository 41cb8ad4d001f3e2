"""Safe outputs: guarded overwrite, atomic swap, checks before work, strict JSON, umask, temp sweep."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from rotaquant import io
from rotaquant.errors import NonFiniteError, OutputError, RotaquantError
from rotaquant.io import (
    OUTPUT_MARKER,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    check_writable_output,
    sweep_stale_temps,
)


def _write(target, name="w.txt", text="new", **kw):
    with atomic_directory(target, **kw) as tmp:
        (tmp / name).write_text(text)


def _dot_entries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- item 1: --overwrite replaces only a previous rotaquant output, never cwd/ancestors/home --------
def test_overwrite_refuses_the_working_directory_and_its_ancestors(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep")
    (work / OUTPUT_MARKER).write_text("{}")  # even a marked folder: never the cwd
    monkeypatch.chdir(work)
    for target in (".", str(work), "..", str(tmp_path)):
        with pytest.raises(OutputError, match="working directory"):
            _write(target, overwrite=True)
    assert (work / "precious.txt").read_text() == "keep"


def test_overwrite_refuses_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="home"):
        _write(home, overwrite=True)
    assert (home / "notes.txt").read_text() == "keep"


def test_overwrite_refuses_a_folder_rotaquant_did_not_write(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("keep")
    with pytest.raises(OutputError, match="not a rotaquant output"):
        _write(target, overwrite=True)
    assert (target / "thesis.tex").read_text() == "keep"
    assert _dot_entries(tmp_path) == []


def test_overwrite_swaps_in_the_new_output_then_deletes_the_old(tmp_path):
    target = tmp_path / "out"
    _write(target, name="old.txt", text="old")
    assert (target / OUTPUT_MARKER).is_file()
    with pytest.raises(OutputError, match="not empty"):
        _write(target)  # without overwrite
    _write(target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == sorted([OUTPUT_MARKER, "w.txt"])
    assert _dot_entries(tmp_path) == []


def test_a_failed_overwrite_keeps_the_previous_output(tmp_path, monkeypatch):
    target = tmp_path / "out"
    _write(target, name="old.txt", text="old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert (target / "old.txt").read_text() == "old" and _dot_entries(tmp_path) == []
    # the swap itself fails half way: the previous output is put back
    real = os.replace

    def failing(src, dst):
        if ".tmp-" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", failing)
    with pytest.raises(OutputError, match="No space left"):
        _write(target, overwrite=True)
    monkeypatch.setattr(io.os, "replace", real)
    assert (target / "old.txt").read_text() == "old" and _dot_entries(tmp_path) == []


# -- item 3: every output checked before any work ----------------------------------------------
def test_check_writable_output_names_what_is_wrong(tmp_path):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    a_dir = tmp_path / "d"
    a_dir.mkdir()
    (a_dir / "x").write_text("x")
    with pytest.raises(OutputError, match="is a file; the output must be a folder"):
        check_writable_output(a_file, "dir")
    with pytest.raises(OutputError, match="is a folder"):
        check_writable_output(a_dir, "file", overwrite=True)
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        check_writable_output(a_file, "file")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable_output(a_file / "sub" / "r.json", "file")
    assert check_writable_output(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    assert not (tmp_path / "new").exists()  # checking writes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_output_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_writable_output(ro / "r.json")
    finally:
        ro.chmod(0o755)


def test_write_errors_are_named_errors(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write_bytes(blocker / "r.bin", b"1")
    assert issubclass(OutputError, RotaquantError)


# -- item 6: valid JSON only -------------------------------------------------------------------
def test_json_with_nan_is_refused_naming_the_key(tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(NonFiniteError, match=r"eval\.losses\[1\]"):
        atomic_write_json(out, {"eval": {"losses": [1.0, math.nan]}})
    with pytest.raises(NonFiniteError, match="ppl"):
        atomic_write_json(out, {"ppl": math.inf})
    assert not out.exists() and list(tmp_path.iterdir()) == []
    atomic_write_json(out, {"ppl": 3.5})
    assert json.loads(out.read_text()) == {"ppl": 3.5}


# -- item 8: stale temporary folders are swept ----------------------------------------------------
def test_sweep_removes_only_stale_temporary_folders(tmp_path):
    stale, fresh, other = tmp_path / ".m.tmp-abc", tmp_path / ".m.tmp-def", tmp_path / "keep.tmp-x"
    for d in (stale, fresh, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 10)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert sweep_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and fresh.exists() and other.exists()


# -- item 10: outputs respect the umask ------------------------------------------------------------
def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            fd = os.open(tmp / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)  # as a 0600 writer does
            os.close(fd)
            (tmp / "sub").mkdir(mode=0o700)
        assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o755
        assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
        os.umask(0o027)
        atomic_write_bytes(tmp_path / "r.bin", b"1")
        assert (tmp_path / "r.bin").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)

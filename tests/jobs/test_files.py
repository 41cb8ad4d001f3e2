"""The files the jobs write for rotation/ and learn/: rotation files and learning checkpoints."""

import os

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.jobs.files import CheckpointFile, write_rotation_file
from rotaquant.rotation.hadamard import make_rotation
from rotaquant.rotation.matrices import read_rotation_file


def test_rotation_file_round_trips_with_groups_and_metadata(tmp_path):
    r1, r2 = make_rotation(8, "hadamard", seed=0), make_rotation(4, "orthogonal", seed=1)
    path = write_rotation_file(tmp_path / "sub" / "R.safetensors", {"r1": r1, "r2@layers.3": r2}, {"seed": "0"})
    back = read_rotation_file(path)
    assert set(back) == {("r1", ""), ("r2", "layers.3")}
    assert torch.equal(back[("r1", "")], r1) and torch.equal(back[("r2", "layers.3")], r2)
    assert os.listdir(path.parent) == ["R.safetensors"]  # no temp file left beside it


def test_checkpoint_file_reads_none_before_the_first_write_then_the_last_state(tmp_path):
    ckpt = CheckpointFile(tmp_path / "run.ckpt")
    assert ckpt.read() is None and str(ckpt) == str(tmp_path / "run.ckpt")
    ckpt.write({"step": 1, "m": torch.eye(2)})
    ckpt.write({"step": 2, "m": torch.eye(3)})
    state = ckpt.read()
    assert state["step"] == 2 and torch.equal(state["m"], torch.eye(3))
    assert os.listdir(tmp_path) == ["run.ckpt"]


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    ckpt = CheckpointFile(tmp_path / "run.ckpt")
    ckpt.write({"step": 1})

    def broken_save(obj, f):
        f.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.write({"step": 2})
    monkeypatch.undo()
    assert ckpt.read() == {"step": 1} and os.listdir(tmp_path) == ["run.ckpt"]


def test_an_unreadable_checkpoint_is_a_named_error(tmp_path):
    (tmp_path / "run.ckpt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="checkpoint .*run.ckpt is unreadable") as err:
        CheckpointFile(tmp_path / "run.ckpt").read()
    assert "weights_only=False" not in str(err.value)

"""learn_rotations(): the in-memory verb learns orthogonal R1/R2, lowers the loss, writes nothing."""

from __future__ import annotations

import os

import pytest
import torch

import rotaquant
from rotaquant.errors import ConfigError
from tests.conftest import tiny_model

SETTINGS = dict(w_bits=16, a_bits=4, k_bits=4, v_bits=4, iterations=6, batch_size=4, lr=1.0, device="cpu")


def _windows(n=8, seqlen=32):
    return torch.randint(0, 96, (n, seqlen), generator=torch.Generator().manual_seed(0))


def test_learn_rotations_returns_orthogonal_matrices_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = rotaquant.learn_rotations(tiny_model("llama"), windows=_windows(), progress=False, **SETTINGS)
    assert set(result.matrices) == {"r1", "r2@layers.0", "r2@layers.1"}
    for mat in result.matrices.values():
        eye = torch.eye(mat.shape[0], dtype=mat.dtype)
        assert torch.allclose(mat @ mat.T, eye, atol=1e-6)
    assert len(result.losses) == 6 and result.steps_run == 6
    assert os.listdir(tmp_path) == []  # the verb returns the matrices; only the job writes files


def test_learn_rotations_accepts_one_config_object():
    cfg = rotaquant.learn.OptimizeConfig(**SETTINGS)
    result = rotaquant.learn_rotations(tiny_model("llama"), config=cfg, windows=_windows(), progress=False)
    assert result.steps_run == SETTINGS["iterations"]


def test_learn_rotations_without_text_is_a_named_error():
    with pytest.raises(ConfigError, match="tokenizer"):
        rotaquant.learn_rotations(tiny_model("llama"), progress=False, **SETTINGS)

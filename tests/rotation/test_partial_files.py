"""Rotation files must fit the model: missing or extra matrices are refused unless allowed."""

from __future__ import annotations

import logging

import pytest
import torch

from rotaquant.cli import main
from rotaquant.rotation.hadamard import make_rotation
from rotaquant.rotation.matrices import RotationFile, RotationFileError, RotationStore
from rotaquant.rotation.rotate import rotate
from rotaquant.rotation.spec import load_spec
from tests.conftest import tiny_config, tiny_model


def spinquant_file(path, layers=(0, 1)):
    mats = {"R1": make_rotation(64, "orthogonal", seed=1).float()}
    mats.update({f"model.layers.{i}.self_attn.R2": make_rotation(16, "orthogonal", seed=10 + i).float() for i in layers})
    torch.save(mats, path)
    return path


def store():
    return RotationStore(load_spec("llama"), tiny_config(), seed=0)


def test_r1_only_file_is_refused_naming_what_is_missing(tmp_path):
    path = spinquant_file(tmp_path / "R.bin", layers=())
    with pytest.raises(RotationFileError, match=r"missing 2 \(r2@layers\.0, r2@layers\.1\)"):
        store().load(path)


def test_extra_layers_are_refused_naming_them(tmp_path):
    path = spinquant_file(tmp_path / "R.bin", layers=(0, 1, 99))
    with pytest.raises(RotationFileError, match=r"2-layer model does not have: r2@layers\.99"):
        store().load(path)


def test_allow_partial_loads_what_fits_and_warns_precisely(tmp_path, caplog):
    path = spinquant_file(tmp_path / "R.bin", layers=(0, 99))
    s = store()
    with caplog.at_level(logging.WARNING):
        s.load(path, allow_partial=True)
    assert "r2@layers.1" in caplog.text and "r2@layers.99" in caplog.text
    assert set(s.matrices) == {("r1", ""), ("r2", "layers.0")}  # the extra one is not kept (nor re-exported)
    # through rotate(): a RotationFile carries the opt-in; the model still computes the same function
    model = tiny_model("llama", dtype=torch.float64)
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
    with pytest.raises(RotationFileError):
        rotate(tiny_model("llama", dtype=torch.float64), rotation_path=path, progress=False)
    state = rotate(model, rotation_path=RotationFile(path, allow_partial=True), progress=False)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref, atol=1e-5)
    assert torch.allclose(state.store.matrices[("r2", "layers.0")].float(), make_rotation(16, "orthogonal", seed=10).float())


def test_rotate_cli_refuses_a_partial_file_unless_allowed(tmp_path, monkeypatch, capsys):
    import rotaquant.jobs.rotate as job

    monkeypatch.setattr(job, "load_model", lambda *a, **k: (tiny_model("llama"), None))
    path = spinquant_file(tmp_path / "R.bin", layers=(0,))
    out = tmp_path / "out"
    assert main(["rotate", "-q", "--rotation-path", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "r2@layers.1" in err and "--allow-partial-rotation" in err and not out.exists()
    assert main(["rotate", "-q", "--rotation-path", str(path), "--output", str(out), "--allow-partial-rotation"]) == 0
    assert (out / "config.json").is_file()


def test_ptq_cli_refuses_a_partial_file_unless_allowed(tmp_path, monkeypatch, capsys):
    import rotaquant.jobs.ptq as job
    from tests.conftest import ByteTokenizer

    monkeypatch.setattr(job, "load_model", lambda *a, **k: (tiny_model("llama"), ByteTokenizer()))
    path = spinquant_file(tmp_path / "R.bin", layers=(0,))
    data = tmp_path / "t.txt"
    data.write_text("rotations spread outliers\n" * 40)
    argv = ["ptq", "-q", "--a-bits", "8", "--rotation-path", str(path), "--data", str(data), "--seqlen", "32",
            "--max-windows", "1"]
    assert main(argv) == 2
    assert "r2@layers.1" in capsys.readouterr().err
    assert main([*argv, "--allow-partial-rotation"]) == 0

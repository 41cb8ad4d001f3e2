"""optimize --resume without a checkpoint starts over and says so, never overwriting a finished output;
an unreadable checkpoint never suggests weights_only=False."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from rotaquant.errors import ConfigError, OutputError
from rotaquant.jobs.learn import optimize
from tests.conftest import ByteTokenizer, tiny_model
from tests.jobs.test_learn import SETTINGS


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("rotation hadamard quantize model token outlier scale matrix " * 300)
    return str(path)


def _optimize(out, text_file, **kw):
    return optimize(None, output=out, progress=False, preloaded=(tiny_model("llama"), ByteTokenizer()),
                    **dict(SETTINGS, data=text_file, iterations=2, **kw))


def test_resume_without_checkpoint_keeps_a_finished_output(tmp_path, text_file, caplog):
    out = tmp_path / "R.safetensors"
    out.write_bytes(b"a finished run's rotations")
    with caplog.at_level(logging.WARNING), pytest.raises(OutputError, match="--overwrite"):
        _optimize(out, text_file, resume=True)
    assert "no checkpoint" in caplog.text and "starting from scratch" in caplog.text
    assert out.read_bytes() == b"a finished run's rotations"


def test_resume_without_checkpoint_starts_from_scratch(tmp_path, text_file, caplog):
    out = tmp_path / "R.safetensors"
    with caplog.at_level(logging.WARNING):
        summary = _optimize(out, text_file, resume=True)
    assert "no checkpoint" in caplog.text and summary["resumed_from"] == 0 and out.is_file()


def _truncated_pickle_in_an_intact_zip(path):
    """The probe's case: a cut pickle in an intact zip, which torch answers with advice to retry
    with weights_only=False (the cut is chosen so that torch's own message holds that advice)."""
    import zipfile

    buf = io.BytesIO()
    torch.save({"format": "rotaquant-learn-checkpoint-v1", "step": 1, "x": torch.ones(1000)}, buf)
    src = zipfile.ZipFile(buf)
    pickle_name = next(n for n in src.namelist() if n.endswith("data.pkl"))
    for cut in range(len(src.read(pickle_name)) - 1, 0, -1):
        with zipfile.ZipFile(path, "w") as dst:
            for name in src.namelist():
                data = src.read(name)
                dst.writestr(name, data[:cut] if name == pickle_name else data)
        try:
            torch.load(str(path), weights_only=True)
        except Exception as exc:
            if "weights_only` set to `False" in str(exc):
                return
    raise AssertionError("no cut of the pickle gives torch's weights_only advice")


@pytest.mark.parametrize("damage", ["half-file", "truncated-pickle"])
def test_truncated_checkpoint_never_suggests_weights_only_false(tmp_path, text_file, damage):
    out = tmp_path / "R.safetensors"
    ckpt = tmp_path / "R.safetensors.ckpt"
    if damage == "half-file":
        buf = io.BytesIO()
        torch.save({"format": "rotaquant-learn-checkpoint-v1", "step": 1, "x": torch.ones(1000)}, buf)
        ckpt.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    else:
        _truncated_pickle_in_an_intact_zip(ckpt)
    with pytest.raises(ConfigError, match="is truncated or corrupt") as info:
        _optimize(out, text_file, resume=True)
    assert "weights_only" not in str(info.value) and "weights only" not in str(info.value).lower()


def test_checkpoint_with_arbitrary_objects_is_refused_without_unsafe_advice(tmp_path, text_file):
    out = tmp_path / "R.safetensors"
    ckpt = tmp_path / "R.safetensors.ckpt"
    torch.save({"format": "rotaquant-learn-checkpoint-v1", "obj": ValueError("x")}, ckpt)
    with pytest.raises(ConfigError, match="never unpickles") as info:
        _optimize(out, text_file, resume=True)
    assert "weights_only" not in str(info.value)

"""optimize(): rotation files that ptq/rotate consume, SpinQuant format, refusals, torchrun."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rotaquant.errors import OutputError
from rotaquant.jobs.learn import optimize
from rotaquant.rotation.matrices import RotationFileError, read_rotation_file
from rotaquant.rotation.rotate import rotate
from tests.conftest import ByteTokenizer, tiny_model

SETTINGS = dict(w_bits=4, a_bits=4, k_bits=4, v_bits=4, nsamples=8, seqlen=32, iterations=4, batch_size=4,
                lr=1.0, device="cpu")


@pytest.fixture
def text_file(tmp_path):
    words = ["rotation", "hadamard", "quantize", "model", "token", "outlier", "scale", "matrix"]
    gen = torch.Generator().manual_seed(0)
    text = " ".join(words[i] for i in torch.randint(0, len(words), (3000,), generator=gen).tolist())
    path = tmp_path / "calib.txt"
    path.write_text(text)
    return str(path)


def _run(tmp_path, text_file, **kw):
    args = dict(SETTINGS, data=text_file)
    args.update(kw)
    out = kw.pop("output", tmp_path / "R.safetensors")
    args.pop("output", None)
    return optimize(None, output=out, progress=False, preloaded=(tiny_model("llama"), ByteTokenizer()), **args)


def test_optimize_writes_a_file_that_rotate_and_ptq_consume(tmp_path, text_file):
    _run(tmp_path, text_file, json_path=tmp_path / "s.json", spinquant_output=tmp_path / "R.bin")
    path = tmp_path / "R.safetensors"
    assert path.is_file() and (tmp_path / "R.bin").is_file()
    assert not (tmp_path / "R.safetensors.tmp").exists()
    assert not (tmp_path / "R.safetensors.ckpt").exists()  # the default checkpoint goes once done
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["bits"] == "W4A4KV4" and len(summary["losses"]) == 4 and summary["world_size"] == 1
    steps = summary["step_seconds"]  # the median leaves out the first (warm-up) step
    assert len(steps) == 4 and summary["median_step_seconds"] == sorted(steps[1:])[1]
    mats = read_rotation_file(path)
    assert set(mats) == {("r1", ""), ("r2", "layers.0"), ("r2", "layers.1")}
    assert all(m.dtype == torch.float64 for m in mats.values())
    # the SpinQuant file holds the same matrices under SpinQuant's names
    spin = read_rotation_file(tmp_path / "R.bin")
    assert all(torch.equal(spin[k], mats[k]) for k in mats)
    # rotate() with the learned file: same function as the original, weights use the learned R1
    ref = tiny_model("llama")
    ids = torch.randint(0, 96, (1, 20))
    with torch.no_grad():
        expected = ref(ids).logits
    model = tiny_model("llama")
    state = rotate(model, rotation_path=path, progress=False)
    assert torch.equal(state.store.get("r1"), mats[("r1", "")])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, expected, atol=1e-4)
    # and the PTQ pipeline reads it through its recipe
    from rotaquant.jobs.ptq import run_ptq

    out = run_ptq(None, progress=False, preloaded=(tiny_model("llama"), ByteTokenizer()), rotation_path=str(path),
                  w_bits=4, a_bits=4, preset="none", data=text_file, seqlen=32, max_windows=2, device="cpu")
    assert out["ppl"] > 1 and out["recipe"]["rotation_path"] == str(path)


def test_existing_output_needs_overwrite(tmp_path, text_file):
    (tmp_path / "R.safetensors").write_bytes(b"old")
    with pytest.raises(OutputError, match="overwrite"):
        _run(tmp_path, text_file)
    assert (tmp_path / "R.safetensors").read_bytes() == b"old"


def test_init_file_of_wrong_shape_or_dtype_is_refused(tmp_path, text_file):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"r1": torch.eye(32, dtype=torch.float64)}, str(bad))  # hidden size is 64
    with pytest.raises(RotationFileError, match=r"shape \(32, 32\), expected \(64, 64\)"):
        _run(tmp_path, text_file, init_path=str(bad))
    save_file({"r1": torch.eye(64, dtype=torch.int32)}, str(bad))
    with pytest.raises(RotationFileError, match="floating-point"):
        _run(tmp_path, text_file, init_path=str(bad))
    assert not (tmp_path / "R.safetensors").exists()


def test_init_from_a_learned_file_continues_from_it(tmp_path, text_file):
    first = _run(tmp_path, text_file, iterations=2)
    res = _run(tmp_path, text_file, iterations=1, init_path=str(tmp_path / "R.safetensors"),
               output=tmp_path / "R2.safetensors", lr=1e-9)
    for key, mat in first["matrices"].items():
        assert torch.allclose(mat, res["matrices"][key], atol=1e-6)


# -- torchrun-style data parallelism, on CPU with Gloo ---------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, text_file: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    args = dict(SETTINGS, data=text_file, w_bits=16, a_bits=4, iterations=3)
    res = optimize(None, output=os.path.join(out_dir, "R.safetensors"), progress=False,
                   preloaded=(tiny_model("llama"), ByteTokenizer()), **args)
    torch.save({"matrices": res["matrices"], "losses": res["losses"], "div": res["rank_divergence"],
                "world": res["world_size"]}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_ranks_equal_one_rank(tmp_path, text_file):
    single = _run(tmp_path, text_file, w_bits=16, a_bits=4, iterations=3, output=tmp_path / "single.safetensors")
    mp.spawn(_worker, args=(2, _free_port(), text_file, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == 2 and r0["div"] == 0.0
    assert r0["losses"] == pytest.approx(single["losses"], rel=1e-5)
    for key, mat in single["matrices"].items():
        assert torch.allclose(r0["matrices"][key], mat, atol=1e-5), key
        assert torch.equal(r0["matrices"][key], r1["matrices"][key])
    assert (tmp_path / "R.safetensors").is_file()  # rank 0 wrote the output

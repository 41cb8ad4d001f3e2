"""benchmarks/seed_sweep.py end to end on a tiny model: every row, two seeds, JSON with the
environment and the command, --append merging, mean and spread."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rotaquant.data import default_data_dir
from tests.conftest import ByteTokenizer, tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seed_sweep.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("seed_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~25 s on a shared CPU
@pytest.mark.skipif(default_data_dir() is None, reason="WikiText-2 not found (ROTAQUANT_DATA_DIR)")
def test_sweep_on_a_tiny_model(tmp_path, monkeypatch):
    sweep = _load_script()
    monkeypatch.setattr(sweep, "load_model", lambda *a, **k: (tiny_model("llama", seed=0), ByteTokenizer()))
    out = tmp_path / "sweep.json"
    tiny = ["--max-windows", "1", "--seqlen", "32", "--nsamples", "2", "--steps", "2", "--learn-nsamples", "4",
            "--out-dir", str(tmp_path), "--json", str(out)]
    sweep.main(["--rows", *sweep.ROWS, "--seeds", "0", "1", *tiny])
    data = json.loads(out.read_text())
    assert {(r["row"], r["seed"]) for r in data["runs"]} == {(k, s) for k in sweep.ROWS for s in (0, 1)}
    call = data["calls"][0]
    assert {"machine", "torch", "transformers", "commit", "command", "python"} <= set(call)
    assert "--rows" in call["command"]
    learned = [r for r in data["runs"] if r["row"] == "default-learned"]
    assert all(Path(r["learned"]["path"]).is_file() and r["recipe"]["rotation_path"] for r in learned)
    grids = {r["row"]: r["recipe"]["sym_grid"] for r in data["runs"]}
    assert grids["llmc-rtn-full"] == "full" and grids["llmc-rtn-restricted"] == "restricted"
    assert all(r["recipe"]["gptq_act_order"] and not r["recipe"]["rotate"] for r in data["runs"]
               if r["row"].startswith("llmc-w4a16"))
    summary = {s["row"]: s for s in data["summary"]}
    assert set(summary) == set(sweep.ROWS) and all(s["min"] <= s["mean"] <= s["max"] for s in summary.values())
    # a second call adds seed 2 of one row and keeps the rest
    sweep.main(["--rows", "llmc-rtn-full", "--seeds", "2", "--append", *tiny])
    data = json.loads(out.read_text())
    assert len(data["calls"]) == 2 and len(data["runs"]) == 2 * len(sweep.ROWS) + 1
    assert {s["row"]: s["seeds"] for s in data["summary"]}["llmc-rtn-full"] == "0,1,2"

"""The CLI checks before loading, fails with `rotaquant X: error:` (exit 2), and never loses data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rotaquant.cli import main
from rotaquant.io import OUTPUT_MARKER
from tests.conftest import ByteTokenizer, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _no_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad setting was noticed")


@pytest.fixture
def no_load(monkeypatch):
    """Every job's load_model fails the test: errors must come before loading."""
    import rotaquant.jobs.eval as ev
    import rotaquant.jobs.learn as learn_job
    import rotaquant.jobs.ptq as ptq_job
    import rotaquant.jobs.rotate as rotate_job
    import rotaquant.models.loading as loading

    for module in (ev, learn_job, ptq_job, rotate_job):
        monkeypatch.setattr(module, "load_model", _no_load)
    monkeypatch.setattr(loading, "_load_folder", _no_load)


@pytest.fixture
def tiny_load(monkeypatch):
    import rotaquant.jobs.eval as ev
    import rotaquant.jobs.ptq as ptq_job
    import rotaquant.jobs.rotate as rotate_job

    for module in (ev, ptq_job):
        monkeypatch.setattr(module, "load_model", lambda *a, **k: (tiny_model("llama"), ByteTokenizer()))
    monkeypatch.setattr(rotate_job, "load_model", lambda *a, **k: (tiny_model("llama"), None))


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("rotations spread outliers over every channel\n" * 80)
    return str(path)


def _error(capsys, code, expected: str):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error:" in err and expected in err and "Traceback" not in err, err


# -- item 4: bad device/dtype are named errors before loading, in every command --------------------
COMMANDS = {
    "eval": ["eval"],
    "ptq": ["ptq", "--w-bits", "4"],
    "rotate": ["rotate", "--output", "{tmp}/out"],
    "optimize": ["optimize", "--output", "{tmp}/R.safetensors", "--a-bits", "4"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("flags,expected", [(["--dtype", "bogus"], "unknown dtype 'bogus'"),
                                            (["--device", "gpu"], "unknown device 'gpu'"),
                                            (["--device", "cuda"], "--device cpu")])
def test_bad_device_or_dtype_fails_before_loading(command, flags, expected, tmp_path, capsys, no_load, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [a.format(tmp=tmp_path) for a in COMMANDS[command]] + flags + ["-q"]
    _error(capsys, main(argv), expected)
    assert list(tmp_path.iterdir()) == []


# -- item 3: output paths are checked before loading; results printed before written -------------------
@pytest.mark.parametrize("command", ["eval", "ptq"])
def test_unwritable_json_fails_before_loading(command, tmp_path, capsys, no_load):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _error(capsys, main([command, "-q", "--json", str(blocker / "r.json")]), "not a folder")


def test_zero_shot_eval_unwritable_json_fails_before_loading(tmp_path, capsys, monkeypatch):
    import rotaquant.jobs.eval as eval_job

    monkeypatch.setattr(eval_job, "run_eval_tasks", lambda *a, **k: pytest.fail("the tasks ran"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _error(capsys, main(["eval", "-q", "--tasks", "piqa", "--json", str(blocker / "r.json")]), "not a folder")


def test_demo_unwritable_json_fails_before_running(tmp_path, capsys, monkeypatch):
    import rotaquant.jobs.demo as demo

    monkeypatch.setattr(demo, "run_demo", lambda **k: pytest.fail("the demo ran"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _error(capsys, main(["demo", "-q", "--json", str(blocker / "r.json")]), "not a folder")


def test_ptq_prints_the_result_even_if_the_json_write_fails(tmp_path, capsys, monkeypatch, text):
    import rotaquant.jobs.ptq as job

    out_dir = tmp_path / "results"
    out_dir.mkdir()

    def load_then_break_the_output(*args, **kwargs):
        out_dir.rmdir()
        out_dir.write_text("the folder became a file during the run")
        return tiny_model("llama"), ByteTokenizer()

    monkeypatch.setattr(job, "load_model", load_then_break_the_output)
    code = main(["ptq", "-q", "--a-bits", "8", "--no-rotate", "--data", text, "--seqlen", "32", "--max-windows", "1",
                 "--json", str(out_dir / "r.json")])
    captured = capsys.readouterr()
    assert "ppl=" in captured.out
    assert code == 2 and "Traceback" not in captured.err


@pytest.mark.parametrize("kind", ["non-empty", "file", "under-a-file"])
def test_rotate_output_is_checked_before_loading(kind, tmp_path, capsys, no_load):
    target = tmp_path / "out"
    if kind == "non-empty":
        target.mkdir()
        (target / "keep.txt").write_text("keep")
    elif kind == "file":
        target.write_text("keep")
    else:
        (tmp_path / "f").write_text("keep")
        target = tmp_path / "f" / "out"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    _error(capsys, main(["rotate", "-q", "--output", str(target)]), str(target))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_optimize_output_folder_fails_before_loading(tmp_path, capsys, no_load):
    folder = tmp_path / "R"
    folder.mkdir()
    _error(capsys, main(["optimize", "-q", "--output", str(folder), "--a-bits", "4", "--overwrite"]), "is a folder")


def test_group_size_is_checked_before_rotation(tmp_path, capsys, monkeypatch, text):
    import rotaquant.jobs.ptq as job

    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(job, "load_model", lambda *a, **k: (model, ByteTokenizer()))
    _error(capsys, main(["ptq", "-q", "--w-bits", "4", "--w-groupsize", "24", "--data", text]), "w_groupsize 24")
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # not rotated


# -- item 1: rotate --overwrite never wipes the working directory -------------------------------------
def test_rotate_overwrite_of_the_working_directory_is_refused(tmp_path, capsys, monkeypatch, tiny_load):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    _error(capsys, main(["rotate", "-q", "--output", ".", "--overwrite"]), "working directory")
    assert (work / "notes.txt").read_text() == "keep"


def test_rotate_overwrite_replaces_its_own_output(tmp_path, capsys, tiny_load):
    out = tmp_path / "rotated"
    assert main(["rotate", "-q", "--output", str(out)]) == 0
    assert (out / OUTPUT_MARKER).is_file() and (out / "config.json").is_file()
    assert (out / "rotaquant_rotations.safetensors").is_file()  # written inside the atomic folder
    first = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["rotate", "-q", "--output", str(out), "--overwrite", "--seed", "1"]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns != first
    assert [p.name for p in tmp_path.iterdir()] == ["rotated"]  # no temporary or old folder left


# -- item 4: OSErrors from cache paths ---------------------------------------------------------------
def test_unwritable_cache_is_exit_2(tmp_path, capsys, monkeypatch):
    import rotaquant.models.loading as loading

    monkeypatch.setattr(loading, "_convert_gguf", lambda *a: pytest.fail("converted"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    monkeypatch.setenv("ROTAQUANT_CACHE_DIR", str(blocker / "sub"))
    _error(capsys, main(["eval", "-q", "--model", str(gguf)]), "cache")


def test_unexpected_oserror_is_exit_2(tmp_path, capsys, monkeypatch):
    import rotaquant.jobs.eval as ev

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(ev, "load_model", disk_full)
    _error(capsys, main(["eval", "-q"]), "No space left on device")


# -- item 8: SIGTERM cleans up like Ctrl-C ---------------------------------------------------------
SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import rotaquant.jobs.rotate as job
    from rotaquant.cli import main
    from tests.conftest import tiny_model

    def slow_export(model, tokenizer, output, metadata=None, overwrite=False, **kwargs):
        from rotaquant.io import atomic_directory
        with atomic_directory(output, overwrite=overwrite) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x" * 1000)
            Path(sys.argv[2]).write_text("ready")
            time.sleep(60)
        return Path(output)

    job.load_model = lambda *a, **k: (tiny_model("llama"), None)
    job.export_hf = slow_export
    sys.exit(main(["rotate", "-q", "--output", sys.argv[1]]))
""")


def test_sigterm_removes_temporary_folders(tmp_path):
    import signal

    out, ready = tmp_path / "out", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(out), str(ready)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "timed out"
        assert any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 143, proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]  # no .out.tmp-*, no out


def test_json_outputs_are_strict(tmp_path, capsys, monkeypatch, text):
    import rotaquant.jobs.eval as ev

    model = tiny_model("llama")
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: (model, ByteTokenizer()))
    out = tmp_path / "r.json"
    assert main(["eval", "-q", "--data", text, "--seqlen", "32", "--max-windows", "1", "--json", str(out)]) == 0
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

import json

import pytest

from rotaquant.cli import build_parser, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "eval" in out and "demo" in out


def test_eval_help_is_useful(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--seqlen", "--max-windows", "--batch-size", "--device", "--dtype", "--json"):
        assert flag in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2


def test_eval_error_is_one_line_not_a_traceback(capsys, tmp_path):
    code = main(["eval", "--model", str(tmp_path / "nope.gguf"), "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_eval_flags_parse():
    args = build_parser().parse_args(["eval", "--seqlen", "512", "--max-windows", "2", "-q"])
    assert args.seqlen == 512 and args.max_windows == 2 and args.quiet


def test_eval_on_local_text_writes_json(tmp_path, monkeypatch):
    import rotaquant.jobs.eval as ev
    from tests.conftest import ByteTokenizer, tiny_model

    monkeypatch.setattr(ev, "load_model", lambda *a, **k: (tiny_model(), ByteTokenizer()))
    data = tmp_path / "t.txt"
    data.write_text("abc def\n" * 50)
    out = tmp_path / "r.json"
    assert main(["eval", "--data", str(data), "--seqlen", "32", "--json", str(out), "-q"]) == 0
    blob = json.loads(out.read_text())
    assert blob["seqlen"] == 32 and blob["windows"] >= 1 and blob["extra"]["config"]["data"] == str(data)


def test_optimize_flags_map_onto_the_config():
    from rotaquant.cli_flags import config_overrides
    from rotaquant.learn.config import OptimizeConfig

    args = build_parser().parse_args(["optimize", "--output", "R.safetensors", "--w-bits", "16", "--a-bits", "4",
                                      "--k-bits", "4", "--v-bits", "4", "--lr", "0.5", "--iterations", "3",
                                      "--ste", "scale", "--resume"])
    over = config_overrides(args, OptimizeConfig)
    assert over == {"w_bits": 16, "a_bits": 4, "k_bits": 4, "v_bits": 4, "lr": 0.5, "iterations": 3, "ste": "scale"}
    assert args.resume and args.output == "R.safetensors"


def test_optimize_refuses_the_test_split_before_loading(capsys, tmp_path):
    out = tmp_path / "R.safetensors"
    code = main(["optimize", "-q", "--output", str(out), "--a-bits", "4", "--split", "test"])
    assert code == 2
    err = capsys.readouterr().err
    assert "test split" in err and "Traceback" not in err
    assert not out.exists()


def test_import_changes_no_environment_variable():
    import subprocess
    import sys

    code = ("import os; before = dict(os.environ); import rotaquant, rotaquant.models.loading, rotaquant.data; "
            "assert dict(os.environ) == before, set(os.environ) ^ set(before)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

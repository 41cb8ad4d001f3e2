"""``rotaquant ptq --output`` writes an export that ``load_model`` reloads; ``generate`` flags."""

import json

import pytest
import torch

from rotaquant.cli import build_parser, main
from rotaquant.errors import ConfigError
from rotaquant.generate import generate
from rotaquant.models.loading import load_model
from tests.conftest import ByteTokenizer, tiny_model

pytest.importorskip("compressed_tensors")


def test_ptq_output_writes_a_reloadable_export(tmp_path, monkeypatch, capsys):
    import rotaquant.jobs.ptq as job

    kept = {}

    def fake_load(*args, **kwargs):
        kept["model"] = tiny_model("llama")
        return kept["model"], ByteTokenizer()

    monkeypatch.setattr(job, "load_model", fake_load)
    data = tmp_path / "t.txt"
    data.write_text("rotations spread outliers\n" * 80)
    out, res = tmp_path / "w4a8", tmp_path / "r.json"
    argv = ["ptq", "--preset", "none", "--w-bits", "4", "--w-groupsize", "32", "--a-bits", "8", "--k-bits", "8",
            "--v-bits", "8", "--data", str(data), "--seqlen", "64", "--max-windows", "2", "--output", str(out),
            "--json", str(res), "-q"]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    blob = json.loads(res.read_text())
    assert blob["export"]["output"] == str(out) and blob["recipe"]["output"] == str(out)
    ids = torch.randint(0, 96, (1, 16))
    with torch.no_grad():
        again, tok = load_model(out, kernel="reference")
        assert tok is None  # the byte tokenizer cannot be saved
        assert torch.equal(again(ids).logits, kept["model"](ids).logits)
    # the folder exists now: a second run needs --overwrite, and is refused before any work
    assert main(argv) == 2
    assert main([*argv, "--overwrite"]) == 0


def test_generate_flags_and_named_errors():
    args = build_parser().parse_args(["generate", "--model", "x", "--prompt", "hi", "--max-new-tokens", "3",
                                      "--kernel", "reference"])
    assert (args.max_new_tokens, args.kernel, args.temperature) == (3, "reference", 0.0)
    with pytest.raises(ConfigError, match="tokenizer"):
        generate(tiny_model(), None, "hi")

"""``rotaquant eval --tasks``: flags, table, JSON with per-task metrics (tiny model, temp files)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rotaquant.cli import build_parser, main
from tests.conftest import tiny_model


class ModTokenizer:
    """Character ids modulo the tiny model's vocabulary; no special tokens."""

    bos_token_id = bos_token = None
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        import torch

        ids = [ord(c) % 96 for c in text]
        return SimpleNamespace(input_ids=torch.tensor([ids]) if return_tensors == "pt" else ids)


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    import rotaquant.jobs.eval as job

    folder = tmp_path / "zeroshot" / "boolq"
    folder.mkdir(parents=True)
    recs = [{"passage": f"P{i} -- text", "question": "is it", "label": i % 2} for i in range(5)]
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "text.txt").write_text("some words to read\n" * 40)
    monkeypatch.setattr(job, "load_model", lambda *a, **k: (tiny_model(), ModTokenizer()))
    return tmp_path


def test_task_flags_parse():
    args = build_parser().parse_args(["eval", "--tasks", "piqa,boolq", "--limit", "5", "--no-ppl", "--bos", "never"])
    # --limit is the old spelling of --task-limit; unset flags are None (the config's default applies)
    assert (args.tasks, args.task_limit, args.ppl, args.bos, args.task_batch_size) == ("piqa,boolq", 5, False, "never", None)
    assert build_parser().parse_args(["eval"]).tasks is None  # plain `eval` stays a perplexity run


def test_eval_tasks_writes_metrics_json(data_dir, capsys):
    out = data_dir / "r.json"
    assert main(["eval", "--tasks", "boolq", "--limit", "4", "--no-ppl", "--data-dir", str(data_dir),
                 "--json", str(out), "-q"]) == 0
    blob = json.loads(out.read_text())
    boolq = blob["zeroshot"]["tasks"]["boolq"]
    assert boolq["n"] == 4 and set(boolq["metrics"]) == {"acc", "acc_stderr"} and blob["perplexity"] is None
    assert blob["zeroshot"]["average"] == boolq["metrics"]["acc"]
    assert "boolq" in capsys.readouterr().out


def test_eval_tasks_with_perplexity(data_dir):
    out = data_dir / "r.json"
    assert main(["eval", "--tasks", "boolq", "--data", str(data_dir / "text.txt"), "--seqlen", "16",
                 "--data-dir", str(data_dir), "--json", str(out), "-q"]) == 0
    blob = json.loads(out.read_text())
    assert blob["perplexity"]["ppl"] > 1 and blob["zeroshot"]["tasks"]["boolq"]["n"] == 5


def test_unknown_task_is_a_one_line_error(capsys):
    assert main(["eval", "--tasks", "mmlu", "--no-ppl", "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown zero-shot task 'mmlu'" in err and "piqa" in err and "Traceback" not in err

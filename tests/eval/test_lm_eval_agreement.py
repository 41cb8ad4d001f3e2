"""rotaquant's zero-shot scores vs lm-evaluation-harness itself, offline, on the same model object.

The task YAMLs written here ``include`` lm-eval's own task YAMLs and only replace the dataset
with the local files (``dataset_path: json`` + ``data_files``), so lm-eval renders prompts with
its own templates and ``process_docs``. Both sides score the first ``N`` items of every task;
the test asserts identical request strings, per-request log-likelihoods within 1e-4, identical
greedy flags and identical acc / acc_norm. Needs ``pip install lm-eval==0.4.13`` (the ``eval``
extra), the real default model and the task files; run with ``pytest -m slow``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rotaquant.eval.tasks import TASKS, zeroshot_dir
from rotaquant.eval.zeroshot import evaluate_tasks
from tests.conftest import requires_default_model

pytestmark = [pytest.mark.slow, requires_default_model]
N = 30

# task -> (lm-eval YAML under lm_eval/tasks, split name lm-eval reads, our file)
LM_EVAL_YAML = {
    "piqa": ("piqa/piqa.yaml", "validation"),
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "winogrande": ("winogrande/default.yaml", "validation"),
    "boolq": ("super_glue/boolq/default.yaml", "validation"),
    "lambada_openai": ("lambada/lambada_openai.yaml", "test"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "test"),
}


def _write_task_yamls(folder: Path, tasks_root: Path) -> dict[str, str]:
    """One ``rq_<task>.yaml`` per task in ``folder``; returns task -> lm-eval task name."""
    data = zeroshot_dir()
    names = {}
    for task, (yaml_path, split) in LM_EVAL_YAML.items():
        source = data / TASKS[task].files[0]
        if task == "piqa":  # lm-eval's piqa reads `label` from the record; ours is in a .lst file
            labels = (data / TASKS[task].files[1]).read_text().split()
            lines = source.read_text().splitlines()
            source = folder / "piqa_valid.jsonl"
            source.write_text("".join(json.dumps({**json.loads(line), "label": int(lab)}) + "\n"
                                      for line, lab in zip(lines, labels, strict=True)))
        other = {s: "null" for s in ("training_split", "validation_split", "test_split") if not s.startswith(split)}
        names[task] = f"rq_{task}"
        (folder / f"rq_{task}.yaml").write_text(
            f"include: {tasks_root / yaml_path}\ntask: rq_{task}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {source}\n"
            + "".join(f"{k}: {v}\n" for k, v in other.items()))
    return names


def test_rotaquant_agrees_with_lm_eval(default_model, tmp_path):
    pytest.importorskip("lm_eval", minversion="0.4.13")
    if not all((zeroshot_dir() / f).is_file() for s in TASKS.values() for f in s.files):
        pytest.skip("zero-shot task files not found")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    import lm_eval.tasks
    from lm_eval.models.huggingface import HFLM

    model, tok = default_model
    names = _write_task_yamls(tmp_path, Path(lm_eval.tasks.__file__).parent)
    manager = lm_eval.tasks.TaskManager(include_path=str(tmp_path))
    theirs = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=16),
                                     tasks=list(names.values()), limit=N, task_manager=manager,
                                     bootstrap_iters=100, log_samples=True)
    ours = evaluate_tasks(model, tok, list(names), limit=N, batch_size=16, keep_samples=True, progress=False)

    worst = 0.0
    for task, lm_name in names.items():
        samples = sorted(theirs["samples"][lm_name], key=lambda s: s["doc_id"])
        mine = ours.tasks[task].samples
        assert len(samples) == len(mine) == N
        for s, m in zip(samples, mine, strict=True):
            assert [list(a) for a in s["arguments"]] == m["requests"], f"{task} doc {s['doc_id']}"
            their_ll = [r[0] for r in s["filtered_resps"]]
            my_ll = m.get("logliks", [m.get("loglik")])
            worst = max(worst, *(abs(a - b) for a, b in zip(their_ll, my_ll, strict=True)))
            assert my_ll == pytest.approx(their_ll, abs=1e-4), f"{task} doc {s['doc_id']}"
            if task == "lambada_openai":
                assert m["greedy"] == bool(s["filtered_resps"][0][1])
        res = theirs["results"][lm_name]
        for metric in ("acc", "acc_norm", "perplexity"):
            if f"{metric},none" in res:
                assert ours.tasks[task].metrics[metric] == pytest.approx(res[f"{metric},none"], rel=1e-6, abs=1e-9)
        assert ours.tasks[task].metrics["acc_stderr"] == pytest.approx(res["acc_stderr,none"], rel=1e-6)
        assert set(ours.tasks[task].metrics) >= {k.split(",")[0] for k in res if k.endswith(",none")} - {"name"}
    print(f"max |loglik difference| over {sum(len(d) for d in theirs['samples'].values())} items: {worst:.2e}")

"""Task builders on the first lines of the real files, the HellaSwag cleaner, and the named errors."""

from __future__ import annotations

import pytest

from rotaquant.data import default_data_dir
from rotaquant.errors import ConfigError, DataError
from rotaquant.eval.tasks import (
    TASKS,
    TaskDataError,
    UnknownTaskError,
    build_hellaswag,
    hellaswag_clean,
    load_docs,
    parse_tasks,
    zeroshot_dir,
)


def _have_files() -> bool:
    root = default_data_dir()
    return root is not None and all((root / "zeroshot" / f).is_file() for s in TASKS.values() for f in s.files)


requires_task_files = pytest.mark.skipif(not _have_files(), reason="zero-shot files not found (../shared/data/zeroshot)")

FIRST = {  # task -> (context of choice 0, continuation of choice 0, gold, number of choices)
    "piqa": ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
             " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
             "you will also need to supply it with a water bottle and a food dish.", 0, 2),
    "arc_easy": ("Question: Which statement best explains why photosynthesis is the foundation of most food "
                 "webs?\nAnswer:", " Sunlight is the source of energy for nearly all ecosystems.", 0, 4),
    "hellaswag": ("Roof shingle removal: A man is sitting on a roof. He", " is using wrap to wrap a pair of skis.", 3, 4),
    "winogrande": ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases.", 1, 2),
    "openbookqa": ("A person wants to start saving money so that they can afford a nice vacation at the end of "
                   "the year. After looking over their budget and expenses, they decide the best way to save "
                   "money is to", " make more phone calls", 1, 4),
}


@requires_task_files
@pytest.mark.parametrize("task", list(FIRST))
def test_first_item_matches_lm_eval_rendering(task):
    ctx, cont, gold, n = FIRST[task]
    doc = load_docs(task, limit=1)[0]
    assert doc.requests[0] == (ctx, cont) and doc.gold == gold and len(doc.requests) == n


@requires_task_files
def test_boolq_and_lambada_first_items():
    boolq = load_docs("boolq", limit=1)[0]
    assert boolq.requests[0][0].startswith("Ethanol fuel -- All biomass goes through")
    assert boolq.requests[0][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [c for _, c in boolq.requests] == [" no", " yes"] and boolq.choices == ("no", "yes")
    lam = load_docs("lambada_openai", limit=1)[0]
    assert lam.requests == ((lam.requests[0][0], " signs"),) and lam.requests[0][0].endswith("I don't care about")


@requires_task_files
@pytest.mark.parametrize("task", list(TASKS))
def test_invariants_of_every_task_on_the_first_items(task):
    docs = load_docs(task, limit=50)
    assert len(docs) == 50
    for doc in docs:
        assert len(doc.requests) == len(doc.choices) and 0 <= doc.gold < len(doc.requests)
        assert all(cont.startswith(" ") and not ctx.endswith(" ") for ctx, cont in doc.requests)
        if task == "winogrande":
            assert len({cont for _, cont in doc.requests}) == 1  # partial scoring: one continuation
        elif task != "lambada_openai":
            assert len({ctx for ctx, _ in doc.requests}) == 1
            assert [cont[1:] for _, cont in doc.requests] == list(doc.choices)


@requires_task_files
@pytest.mark.parametrize("task,n", [("arc_easy", 2376), ("arc_challenge", 1172), ("openbookqa", 500)])
def test_gold_from_answer_key_agrees_with_the_files_gold_field(task, n):
    import json

    spec = TASKS[task]
    lines = (zeroshot_dir() / spec.files[0]).read_text().splitlines()
    docs = load_docs(task)
    assert len(docs) == len(lines) == n
    assert [d.gold for d in docs] == [json.loads(line)["gold"] for line in lines]


def test_hellaswag_preprocess():
    assert hellaswag_clean(" Do it [title] Step two [header] now  ok ") == "Do it. Step two now ok"
    doc = build_hellaswag({"activity_label": "Cooking", "ctx_a": "A man cooks.", "ctx_b": "then he",
                           "endings": ["eats [step] it.", "sleeps."], "label": "1"})
    assert doc.requests == (("Cooking: A man cooks. Then he", " eats it."), ("Cooking: A man cooks. Then he", " sleeps."))
    assert doc.gold == 1


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UnknownTaskError, match="known tasks: piqa, arc_easy") as err:
        parse_tasks("piqa,mmlu")
    assert isinstance(err.value, ConfigError)
    assert parse_tasks("all") == list(TASKS) and parse_tasks(" ARC_easy,piqa,arc_easy") == ["arc_easy", "piqa"]


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(TaskDataError, match=str(tmp_path / "zeroshot")) as err:
        load_docs("boolq", data_dir=tmp_path)
    assert isinstance(err.value, DataError) and "boolq/val.jsonl" in str(err.value)


def test_malformed_record_is_a_named_error(tmp_path):
    folder = tmp_path / "zeroshot" / "boolq"
    folder.mkdir(parents=True)
    (folder / "val.jsonl").write_text('{"passage": "p", "label": 1}\n')
    with pytest.raises(TaskDataError, match="record 1"):
        load_docs("boolq", data_dir=tmp_path)

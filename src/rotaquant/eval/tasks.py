"""Zero-shot tasks read from local files, turned into lm-evaluation-harness requests.

Each builder follows the task YAML of lm-evaluation-harness (0-shot, no description): it maps
one record of the local file to a :class:`Doc`, the ``(context, continuation)`` requests that
lm-eval would score for it, the gold index, and the choice strings whose character counts
normalise ``acc_norm``. The files and their fields are described in the data folder's README
(``zeroshot/`` under the data directory of :mod:`rotaquant.data`).

Multiple-choice tasks join context and choice with lm-eval's target delimiter, one space.
WinoGrande uses partial scoring: one context per option, one shared continuation.
LAMBADA is a cloze: the last space-separated word is the continuation.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from ..data import default_data_dir
from ..errors import ConfigError, DataError

DELIMITER = " "  # lm-eval's default target_delimiter


class UnknownTaskError(ConfigError):
    """A task name that rotaquant does not know."""


class TaskDataError(DataError):
    """A task's local file is missing or one of its records is malformed."""


@dataclass(frozen=True)
class Doc:
    """One task item: its requests, the gold index and the choices (for ``acc_norm``).

    ``requests[i]`` is the ``(context, continuation)`` pair of choice ``i``; a cloze task
    (LAMBADA) has one request and ``gold == 0``.
    """

    requests: tuple[tuple[str, str], ...]
    gold: int
    choices: tuple[str, ...]


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's file lives and how its records become :class:`Doc` objects."""

    name: str
    files: tuple[str, ...]
    split: str
    build: Callable[[dict], Doc]
    kind: str = "choice"  # "choice": acc (+ acc_norm); "cloze": greedy acc + perplexity
    has_norm: bool = True

    @property
    def primary(self) -> str:
        """The metric the papers' average uses: ``acc_norm`` where the task has it, else ``acc``."""
        return "acc_norm" if self.has_norm else "acc"


def _choice_doc(context: str, choices: list[str], gold: int) -> Doc:
    requests = tuple((context, DELIMITER + choice) for choice in choices)
    return Doc(requests, int(gold), tuple(choices))


def build_piqa(rec: dict) -> Doc:
    """``Question: {goal}\\nAnswer:`` with choices sol1, sol2 (label from the ``.lst`` file)."""
    return _choice_doc(f"Question: {rec['goal']}\nAnswer:", [rec["sol1"], rec["sol2"]], rec["label"])


def build_arc(rec: dict) -> Doc:
    """``Question: {question}\\nAnswer:``; gold = index of ``answerKey`` in ``choices.label``."""
    gold = rec["choices"]["label"].index(rec["answerKey"])
    return _choice_doc(f"Question: {rec['question']}\nAnswer:", list(rec["choices"]["text"]), gold)


def build_openbookqa(rec: dict) -> Doc:
    """The bare ``question_stem``; gold = index of ``answerKey.lstrip()``."""
    gold = rec["choices"]["label"].index(rec["answerKey"].lstrip())
    return _choice_doc(rec["question_stem"], list(rec["choices"]["text"]), gold)


def hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag ``preprocess``: strip, WikiHow ``[title]`` to ``. ``, drop ``[...]``."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def build_hellaswag(rec: dict) -> Doc:
    """``activity_label: ctx_a ctx_b.capitalize()`` (cleaned) and the cleaned endings."""
    query = hellaswag_clean(f"{rec['activity_label']}: {rec['ctx_a']} {rec['ctx_b'].capitalize()}")
    return _choice_doc(query, [hellaswag_clean(e) for e in rec["endings"]], int(rec["label"]))


def build_winogrande(rec: dict) -> Doc:
    """Partial scoring: contexts ``sentence[:i] + option``, continuation ``" " + rest.strip()``.

    ``i`` is the position of the blank ``_``. lm-eval normalises by these contexts' lengths,
    but WinoGrande reports ``acc`` only.
    """
    sentence = rec["sentence"]
    blank = sentence.index("_")
    rest = DELIMITER + sentence[blank + 1 :].strip()
    contexts = tuple(sentence[:blank] + opt for opt in (rec["option1"], rec["option2"]))
    return Doc(tuple((ctx, rest) for ctx in contexts), {"1": 0, "2": 1}[rec["answer"]], contexts)


def build_boolq(rec: dict) -> Doc:
    """``{passage}\\nQuestion: {question}?\\nAnswer:`` with choices ``no``/``yes`` (label 1 = yes)."""
    return _choice_doc(f"{rec['passage']}\nQuestion: {rec['question']}?\nAnswer:", ["no", "yes"], int(rec["label"]))


def build_lambada(rec: dict) -> Doc:
    """Context = all but the last space-separated word; continuation = ``" " + last word``."""
    words = rec["text"].split(" ")
    return Doc(((" ".join(words[:-1]), DELIMITER + words[-1]),), 0, (words[-1],))


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("piqa", ("piqa/valid.jsonl", "piqa/valid-labels.lst"), "validation", build_piqa),
        TaskSpec("arc_easy", ("arc/ARC-Easy-Test.jsonl",), "test", build_arc),
        TaskSpec("arc_challenge", ("arc/ARC-Challenge-Test.jsonl",), "test", build_arc),
        TaskSpec("hellaswag", ("hellaswag/hellaswag_val.jsonl.gz",), "validation", build_hellaswag),
        TaskSpec("winogrande", ("winogrande/dev.jsonl",), "validation", build_winogrande, has_norm=False),
        TaskSpec("boolq", ("boolq/val.jsonl",), "validation", build_boolq, has_norm=False),
        TaskSpec("lambada_openai", ("lambada_openai/lambada_test.jsonl",), "test", build_lambada,
                 kind="cloze", has_norm=False),
        TaskSpec("openbookqa", ("openbookqa/test.jsonl",), "test", build_openbookqa),
    )
}


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; an :class:`UnknownTaskError` lists the known tasks."""
    try:
        return TASKS[name.strip().lower()]
    except KeyError:
        raise UnknownTaskError(f"unknown zero-shot task {name!r}; known tasks: {', '.join(TASKS)}") from None


def parse_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"piqa,arc_easy"`` or a list -> validated names in order; ``"all"`` means every task."""
    names = [t for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if [n.strip().lower() for n in names] == ["all"]:
        return list(TASKS)
    if not names:
        raise UnknownTaskError(f"no zero-shot task given; known tasks: {', '.join(TASKS)}")
    return list(dict.fromkeys(get_task(n).name for n in names))


def zeroshot_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The ``zeroshot/`` folder under ``data_dir`` (or :func:`rotaquant.data.default_data_dir`)."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if root is None:
        raise TaskDataError("no data directory found for the zero-shot tasks: pass data_dir (--data-dir) "
                            "or set $ROTAQUANT_DATA_DIR to the folder that holds zeroshot/")
    return root / "zeroshot"


def _jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskDataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def _records(spec: TaskSpec, paths: list[Path]) -> Iterator[dict]:
    if spec.name != "piqa":
        yield from _jsonl(paths[0])
        return
    labels = paths[1].read_text(encoding="utf-8").split()
    for i, rec in enumerate(_jsonl(paths[0])):
        if i >= len(labels):
            raise TaskDataError(f"{paths[1]} has {len(labels)} labels, fewer than the records of {paths[0]}")
        yield {**rec, "label": int(labels[i])}


def load_docs(task: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> list[Doc]:
    """The first ``limit`` (all when None) :class:`Doc` objects of ``task``, in file order.

    Raises:
        UnknownTaskError: the task is not one of :data:`TASKS`.
        TaskDataError: a file is missing (the message names the paths looked at) or malformed.
    """
    spec = get_task(task)
    folder = zeroshot_dir(data_dir)
    paths = [folder / f for f in spec.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TaskDataError(f"{spec.name}: missing {', '.join(missing)} (looked in {folder}; set --data-dir "
                            "or $ROTAQUANT_DATA_DIR to the folder that holds zeroshot/, see its README)")
    docs = []
    for i, rec in enumerate(islice(_records(spec, paths), limit)):
        try:
            docs.append(spec.build(rec))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise TaskDataError(f"{spec.name}: record {i + 1} of {paths[0]} is malformed "
                                f"({type(exc).__name__}: {exc})") from None
    return docs

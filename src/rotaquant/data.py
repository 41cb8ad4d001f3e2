"""Evaluation and calibration text: named sets and local files, all read offline.

The named set ``wikitext2`` is read from a data directory, found in this order: the
``data_dir`` argument (``--data-dir``), ``$ROTAQUANT_DATA_DIR``, ``../shared/data`` next to a
source checkout, and only then (if the ``datasets`` package is installed and the hub reachable)
the Hugging Face hub. Any local ``.txt`` (one row per line) or ``.jsonl`` (field ``text``) file
is accepted as well.

Protocol (as in the GPTQ/QuaRot/SpinQuant papers): the rows are joined with ``"\\n\\n"``,
tokenized once, and cut into non-overlapping windows.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DataError

logger = logging.getLogger(__name__)

JOIN = "\n\n"
NAMED_SETS: dict[str, dict[str, str]] = {
    "wikitext2": {
        "test": "wikitext-2-raw/wiki.test.raw",
        "validation": "wikitext-2/valid.txt",
    },
}
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "eval": "validation"}
PROTOCOL = "rows joined with '\\n\\n', tokenized once, non-overlapping windows"


@dataclass
class TextData:
    """Rows of text from one source; ``text`` joins them with the papers' separator."""

    name: str
    split: str
    rows: list[str]
    source: str

    @property
    def text(self) -> str:
        return JOIN.join(self.rows)


def default_data_dir() -> Path | None:
    """``$ROTAQUANT_DATA_DIR``, else ``../shared/data`` beside a source checkout, else None."""
    env = os.environ.get("ROTAQUANT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    candidate = checkout.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _read_rows(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    raw = path.read_bytes().decode("utf-8")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f"{path}:{lineno}: each JSONL record needs a string field 'text'")
            rows.append(record["text"])
    else:
        rows = raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if rows and rows[-1] == "":
            rows.pop()
    if not any(row.strip() for row in rows):
        raise DataError(f"data file {path} is empty: it has no text to evaluate or calibrate on")
    return rows


def _from_hub(name: str, split: str) -> list[str]:
    try:
        import datasets  # noqa: F401 (optional dependency)
    except ImportError:
        raise DataError(
            f"no local copy of {name}/{split} was found; set --data-dir or $ROTAQUANT_DATA_DIR to "
            "a folder with wikitext-2-raw/wiki.test.raw and wikitext-2/valid.txt, or pass a "
            ".txt/.jsonl path"
        ) from None
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataError(f"{name}/{split} is not available locally and the hub is offline")
    from datasets import load_dataset

    return list(load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])


def load_text(
    source: str | os.PathLike = "wikitext2",
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
) -> TextData:
    """Read a named set's split, or a local ``.txt``/``.jsonl`` file, into rows of text.

    Raises:
        DataError: unknown set or split, missing or empty file.
    """
    split = SPLIT_ALIASES.get(split, split)
    name = str(source)
    if name.lower() in NAMED_SETS:
        files = NAMED_SETS[name.lower()]
        if split not in files and split != "train":
            raise DataError(f"{name} has no split {split!r}; use one of {sorted(files) + ['train']}")
        root = Path(data_dir).expanduser() if data_dir else default_data_dir()
        if split in files and root is not None:
            path = root / files[split]
            if path.is_file():
                return TextData(name.lower(), split, _read_rows(path), str(path))
            if data_dir:
                raise DataError(f"{path} not found: --data-dir must hold {files[split]}")
        if split == "train":
            logger.warning("the WikiText-2 train split is not shipped offline; trying the hub")
        return TextData(name.lower(), split, _from_hub(name, split), "hub:wikitext-2-raw-v1")
    path = Path(name).expanduser()
    if path.suffix.lower() in (".txt", ".raw", ".jsonl", ".tokens") or path.exists():
        return TextData(path.name, split, _read_rows(path), str(path))
    raise DataError(
        f"unknown data {name!r}: use a named set ({', '.join(NAMED_SETS)}) or a local .txt/.jsonl path"
    )


def tokenize(data: TextData | str, tokenizer) -> torch.Tensor:
    """Tokenize the joined text once; returns a 1-D LongTensor of token ids."""
    text = data.text if isinstance(data, TextData) else data
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() == 0:
        raise DataError("the text tokenized to zero tokens")
    return ids


def cut_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows ``[W, seqlen]`` from the start; the remainder is dropped."""
    if seqlen < 2:
        raise DataError(f"seqlen must be >= 2, got {seqlen}")
    count = ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise DataError(f"only {ids.numel()} tokens: not one window of {seqlen}")
    return ids[: count * seqlen].view(count, seqlen)


def sample_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` random windows ``[nsamples, seqlen]``; the same seed gives the same windows."""
    if ids.numel() <= seqlen:
        raise DataError(f"only {ids.numel()} tokens: too few to sample windows of {seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def calibration_windows(
    tokenizer,
    nsamples: int = 128,
    seqlen: int = 2048,
    source: str | os.PathLike = "wikitext2",
    split: str = "validation",
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Random calibration windows (default: the WikiText-2 validation file, never test)."""
    data = load_text(source, split, data_dir)
    if data.name == "wikitext2" and data.split == "test":
        logger.warning("calibrating on the test split makes the test perplexity meaningless")
    return sample_windows(tokenize(data, tokenizer), nsamples, seqlen, seed)

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

import hashlib
import json
import logging
import os
import weakref
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
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass a .txt or .jsonl file (or a named set: "
                        f"{', '.join(NAMED_SETS)} with --data-dir)")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                        "convert it to UTF-8 (e.g. iconv -t utf-8)") from None
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
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
        if split not in files:
            raise DataError(f"{name} has no split {split!r} offline; use one of {sorted(files)}, "
                            "or pass your own text as a .txt/.jsonl path")
        root = Path(data_dir).expanduser() if data_dir else default_data_dir()
        if root is not None:
            path = root / files[split]
            if path.is_file():
                return TextData(name.lower(), split, _read_rows(path), str(path))
            if data_dir:
                raise DataError(f"{path} not found: --data-dir must hold {files[split]}")
        raise DataError(
            f"no local copy of {name}/{split} was found (rotaquant never downloads data); set --data-dir or "
            "$ROTAQUANT_DATA_DIR to a folder with wikitext-2-raw/wiki.test.raw and wikitext-2/valid.txt, "
            "or pass a .txt/.jsonl path"
        )
    path = Path(name).expanduser()
    if path.suffix.lower() in (".txt", ".raw", ".jsonl", ".tokens") or path.exists():
        return TextData(path.name, split, _read_rows(path), str(path))
    raise DataError(
        f"unknown data {name!r}: use a named set ({', '.join(NAMED_SETS)}) or a local .txt/.jsonl path"
    )


# token ids per tokenizer (weakly held: dropped with it) and text: an evaluation of WikiText-2 test
# spends ~1 s tokenizing (H200 host), as long as the FP16 model's forward passes take, and a
# process often evaluates several models on one text (ptq, demo, benchmarks)
_TOKENIZED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TEXTS_PER_TOKENIZER = 4


def tokenize(data: TextData | str, tokenizer) -> torch.Tensor:
    """Tokenize the joined text once; returns a 1-D LongTensor of token ids.

    The ids are kept per tokenizer object (and its BOS/EOS settings and size) and text, so the
    same text is tokenized once per process; each call returns its own copy.
    """
    text = data.text if isinstance(data, TextData) else data
    key = (hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest(),
           getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None),
           len(tokenizer) if hasattr(tokenizer, "__len__") else None)
    try:
        cache = _TOKENIZED.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache
        cache = {}
    if key not in cache:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        if ids.numel() == 0:
            raise DataError("the text tokenized to zero tokens")
        if len(cache) >= _TEXTS_PER_TOKENIZER:
            cache.pop(next(iter(cache)))
        cache[key] = ids
    return cache[key].clone()


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


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.samefile(b):
            return True
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def is_test_set(source: str | os.PathLike, split: str, data_dir: str | os.PathLike | None = None) -> bool:
    """True if ``source``/``split`` is the WikiText-2 test set: by name, or a path to that file
    (the same file, a byte-identical copy, or a file named ``wiki.test.*``)."""
    name = str(source)
    if name.lower() in NAMED_SETS:
        return SPLIT_ALIASES.get(split, split) == "test"
    path = Path(name).expanduser()
    if path.name.lower().startswith("wiki.test."):
        return True
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if root is None or not path.is_file():
        return False
    test_file = root / NAMED_SETS["wikitext2"]["test"]
    return test_file.is_file() and _same_file(path, test_file)


def check_calibration_source(source: str | os.PathLike, split: str, data_dir: str | os.PathLike | None = None,
                             allow_test: bool = False) -> None:
    """Refuse to calibrate (or learn) on the WikiText-2 test set unless ``allow_test`` says so.

    Raises:
        DataError: the source is the test set (named, by path, or a copy) and ``allow_test`` is False.
    """
    if is_test_set(source, split, data_dir):
        if not allow_test:
            raise DataError(
                f"calibration data {source!s} (split {split!r}) is the WikiText-2 test set, on which the "
                "perplexity is measured: calibrating on it makes that perplexity meaningless. Use the "
                "validation split (default) or other text; set allow_test_calibration: true "
                "(--allow-test-calibration) only if you mean it")
        logger.warning("calibrating on the WikiText-2 test set (allowed explicitly): its perplexity is not a fair measure")


def calibration_windows(
    tokenizer,
    nsamples: int = 128,
    seqlen: int = 2048,
    source: str | os.PathLike = "wikitext2",
    split: str = "validation",
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    allow_test: bool = False,
) -> torch.Tensor:
    """Random calibration windows (default: the WikiText-2 validation file).

    The WikiText-2 test set (by name or by path) is refused unless ``allow_test`` is True.
    """
    check_calibration_source(source, split, data_dir, allow_test)
    data = load_text(source, split, data_dir)
    return sample_windows(tokenize(data, tokenizer), nsamples, seqlen, seed)

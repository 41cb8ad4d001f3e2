import json

import pytest
import torch

from rotaquant.data import (
    JOIN,
    calibration_windows,
    cut_windows,
    default_data_dir,
    load_text,
    sample_windows,
    tokenize,
)
from rotaquant.errors import DataError


def test_cut_windows_is_non_overlapping_and_drops_the_remainder():
    ids = torch.arange(10)
    w = cut_windows(ids, 3)
    assert w.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert cut_windows(ids, 3, max_windows=2).shape == (2, 3)
    with pytest.raises(DataError):
        cut_windows(torch.arange(2), 3)


def test_sample_windows_reproducible_by_seed():
    ids = torch.arange(1000)
    a, b = sample_windows(ids, 5, 16, seed=3), sample_windows(ids, 5, 16, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_windows(ids, 5, 16, seed=4))
    # each window is a contiguous slice of the corpus
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(5, 15, dtype=torch.long))


def test_txt_and_jsonl_rows(tmp_path, byte_tokenizer):
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"first\r\nsecond\r\n")
    data = load_text(str(txt))
    assert data.rows == ["first", "second"] and data.text == "first" + JOIN + "second"
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": "x y"}) + "\n\n" + json.dumps({"text": "z"}) + "\n")
    assert load_text(str(jl)).rows == ["x y", "z"]
    assert tokenize(load_text(str(jl)), byte_tokenizer).numel() == len("x y\n\nz")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_is_a_named_error(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match="empty"):
        load_text(str(f))


def test_bad_jsonl_says_where(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_text(str(f))


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_text(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="no split"):
        load_text("wikitext2", "dev-clean")


def test_data_dir_argument_wins(tmp_path, monkeypatch):
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw" / "wiki.test.raw").write_text(" a\n b\n")
    monkeypatch.setenv("ROTAQUANT_DATA_DIR", "/nonexistent")
    data = load_text("wikitext2", "test", data_dir=tmp_path)
    assert data.rows == [" a", " b"] and data.source.startswith(str(tmp_path))
    with pytest.raises(DataError, match="--data-dir"):
        load_text("wikitext2", "validation", data_dir=tmp_path)


shared = default_data_dir()
needs_shared = pytest.mark.skipif(
    shared is None or not (shared / "wikitext-2-raw" / "wiki.test.raw").is_file(),
    reason="shared WikiText-2 data not present",
)


@needs_shared
def test_shared_wikitext2_files():
    test = load_text("wikitext2", "test")
    assert len(test.rows) == 2891 and test.split == "test"
    valid = load_text("wikitext2", "valid")
    assert valid.split == "validation" and len(valid.rows) > 1000


@needs_shared
def test_calibration_defaults_to_validation(byte_tokenizer):
    w = calibration_windows(byte_tokenizer, nsamples=4, seqlen=32, seed=1)
    assert w.shape == (4, 32)
    assert torch.equal(w, calibration_windows(byte_tokenizer, nsamples=4, seqlen=32, seed=1))


def test_tokenize_once_per_tokenizer_and_text(byte_tokenizer):
    """The same text is tokenized once per tokenizer; callers get their own copy; another text,
    a changed BOS setting or another tokenizer is tokenized again."""
    from rotaquant.data import tokenize
    from tests.conftest import ByteTokenizer

    calls = []

    class Counting(ByteTokenizer):
        def __call__(self, text, **kw):
            calls.append(text)
            return super().__call__(text, **kw)

    tok = Counting()
    first = tokenize("rotations spread outliers", tok)
    first[0] = -1  # a caller's copy: the cache is untouched
    again = tokenize("rotations spread outliers", tok)
    assert len(calls) == 1 and again[0] != -1
    assert torch.equal(again, byte_tokenizer("rotations spread outliers", return_tensors="pt").input_ids[0])
    tokenize("another text", tok)
    tok.add_bos_token = True
    tokenize("rotations spread outliers", tok)
    tokenize("rotations spread outliers", Counting())
    assert len(calls) == 4

"""Fuzz-style: malformed recipes, rotation files and data files through the CLI's ``main``.

Every case must end in a named error (``rotaquant X: error: ...`` on stderr, no traceback),
exit code 2, and nothing written to the output paths (nor temporary folders left beside them).
The malformed inputs are generated from a fixed seed, so a failure reproduces.
"""

from __future__ import annotations

import io
import random

import pytest
import torch
import yaml

from rotaquant.cli import main
from rotaquant.rotation.hadamard import make_rotation
from tests.conftest import ByteTokenizer, tiny_model

RNG_SEED = 20261125
VALID_RECIPE = {"w_bits": 4, "a_bits": 8, "seqlen": 32, "max_windows": 1, "rotate": False}


def _random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n)) + b"\xff\xfe"  # never valid UTF-8


# -- generators ------------------------------------------------------------------------------
def bad_recipes() -> list[tuple[str, bytes]]:
    rng = random.Random(RNG_SEED)
    dump = lambda d: yaml.safe_dump(d).encode()  # noqa: E731
    cases = [
        ("non-utf8", _random_bytes(rng, 64)),
        ("unclosed-list", b"w_bits: [4\n"),
        ("unclosed-map", b"w_bits: {a: 1\n"),
        ("tab-indent", b"w_bits: 4\n\ta_bits: 4\n"),
        ("bare-colon", b":\n:\n"),
        ("list-top", b"- w_bits: 4\n- a_bits: 4\n"),
        ("scalar-top", b"42\n"),
        ("string-top", b"'just text'\n"),
        ("python-tag", b"!!python/object/apply:os.system ['true']\n"),
        ("deep-nesting", b"w_bits: " + b"[" * 3000 + b"]" * 3000 + b"\n"),
        ("anchors", b"a: &a [1, 1, 1]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"),
    ]
    for i in range(4):
        key = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(3, 12)))
        cases.append((f"unknown-key-{i}", dump({**VALID_RECIPE, f"x{key}": rng.randint(0, 9)})))
    wrong = [("w_bits", -5), ("w_bits", 10**9), ("w_bits", [4]), ("seqlen", 1), ("seqlen", "abc"),
             ("nsamples", 0), ("a_clip_ratio", 5.0), ("w_method", "awq"), ("rotate", "abc"),
             ("batch_size", {"a": 1}), ("dtype", "bogus"), ("device", "gpu"), ("max_windows", -1)]
    for key, value in rng.sample(wrong, len(wrong)):
        cases.append((f"wrong-{key}", dump({**VALID_RECIPE, key: value})))
    return cases


def _save_torch(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _save_safetensors(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def bad_rotation_files() -> list[tuple[str, str, bytes]]:
    """(case, suffix, bytes) of rotation files that do not fit the tiny 2-layer, 64-wide Llama."""
    rng = random.Random(RNG_SEED + 1)
    r1 = make_rotation(64, "orthogonal", seed=1)
    r2 = make_rotation(16, "orthogonal", seed=2)
    good_st = {"r1": r1, "r2@layers.0": r2, "r2@layers.1": r2}
    good_pt = {"R1": r1, "model.layers.0.self_attn.R2": r2, "model.layers.1.self_attn.R2": r2}
    nan_r1 = r1.clone()
    nan_r1[3, 3] = float("nan")
    st, pt = _save_safetensors(good_st), _save_torch(good_pt)
    cases = [
        ("empty-st", ".safetensors", b""),
        ("empty-pt", ".bin", b""),
        ("random-st", ".safetensors", _random_bytes(rng, 300)),
        ("random-pt", ".pt", _random_bytes(rng, 300)),
        ("truncated-st", ".safetensors", st[: rng.randint(10, len(st) - 10)]),
        ("truncated-pt", ".bin", pt[: rng.randint(10, len(pt) - 10)]),
        ("wrong-shape", ".safetensors", _save_safetensors({**good_st, "r1": torch.eye(32, dtype=torch.float64)})),
        ("integer", ".safetensors", _save_safetensors({**good_st, "r1": torch.eye(64, dtype=torch.int32)})),
        ("not-orthogonal", ".safetensors", _save_safetensors({**good_st, "r1": torch.randn(64, 64, dtype=torch.float64)})),
        ("nan", ".safetensors", _save_safetensors({**good_st, "r1": nan_r1})),
        ("unknown-name", ".safetensors", _save_safetensors({**good_st, "r9": r1})),
        ("extra-layer", ".safetensors", _save_safetensors({**good_st, "r2@layers.99": r2})),
        ("r1-only-st", ".safetensors", _save_safetensors({"r1": r1})),
        ("r1-only-pt", ".bin", _save_torch({"R1": r1})),
        ("list-pt", ".bin", _save_torch([r1, r2])),
        ("non-tensor-pt", ".bin", _save_torch({**good_pt, "R1": [1.0, 2.0]})),
        ("unknown-key-pt", ".bin", _save_torch({**good_pt, "model.layers.0.mlp.R9": r2})),
        ("pickled-object-pt", ".bin", _save_torch({**good_pt, "R1": ValueError("not a tensor")})),
    ]
    return cases


def bad_data_files() -> list[tuple[str, str, bytes | None]]:
    """(case, name, bytes) of evaluation data; bytes None means a folder of that name."""
    rng = random.Random(RNG_SEED + 2)
    return [
        ("non-utf8-txt", "d.txt", _random_bytes(rng, 500)),
        ("latin1-txt", "d.txt", "caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 40),
        ("empty-txt", "d.txt", b""),
        ("whitespace-txt", "d.txt", b"   \n\t\n  \n"),
        ("bad-json-line", "d.jsonl", b'{"text": "ok"}\n{"text": \n'),
        ("no-text-field", "d.jsonl", b'{"body": "x"}\n'),
        ("text-not-string", "d.jsonl", b'{"text": 42}\n'),
        ("array-record", "d.jsonl", b'["text"]\n'),
        ("non-utf8-jsonl", "d.jsonl", b'{"text": "' + _random_bytes(rng, 50) + b'"}\n'),
        ("too-short", "d.txt", b"abc\n"),
        ("a-folder", "d.txt", None),
    ]


# -- the CLI under fuzz ------------------------------------------------------------------------
def _assert_named_error(capsys, code, outputs, folder):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error:" in err and "Traceback" not in err, err
    for path in outputs:
        assert not path.exists(), f"{path} was written"
    leftovers = [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers, leftovers


def _fail_load(*args, **kwargs):
    raise AssertionError("a malformed recipe reached model loading")


@pytest.mark.parametrize("case,content", bad_recipes(), ids=[c for c, _ in bad_recipes()])
def test_malformed_recipe(case, content, tmp_path, monkeypatch, capsys):
    import rotaquant.jobs.ptq as job

    monkeypatch.setattr(job, "load_model", _fail_load)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    out = tmp_path / "out.json"
    code = main(["ptq", "-q", "--recipe", str(recipe), "--json", str(out)])
    _assert_named_error(capsys, code, [out], tmp_path)


@pytest.mark.parametrize("case,content", bad_recipes()[:12], ids=[c for c, _ in bad_recipes()[:12]])
def test_malformed_optimize_config(case, content, tmp_path, monkeypatch, capsys):
    import rotaquant.jobs.learn as job

    monkeypatch.setattr(job, "load_model", _fail_load)
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    out = tmp_path / "R.safetensors"
    code = main(["optimize", "-q", "--recipe", str(config), "--output", str(out), "--json", str(tmp_path / "s.json")])
    _assert_named_error(capsys, code, [out, tmp_path / "s.json", tmp_path / "R.safetensors.ckpt"], tmp_path)


@pytest.mark.parametrize("case,suffix,content", bad_rotation_files(), ids=[c for c, _, _ in bad_rotation_files()])
def test_malformed_rotation_file(case, suffix, content, tmp_path, monkeypatch, capsys):
    import rotaquant.jobs.rotate as job

    loaded = []
    monkeypatch.setattr(job, "load_model", lambda *a, **k: loaded.append(1) or (tiny_model("llama"), None))
    rotation = tmp_path / f"R{suffix}"
    rotation.write_bytes(content)
    out = tmp_path / "rotated"
    code = main(["rotate", "-q", "--rotation-path", str(rotation), "--output", str(out)])
    _assert_named_error(capsys, code, [out], tmp_path)
    # an unreadable or foreign file fails before the model is loaded; one that reads but does not
    # fit (shape, orthogonality, missing or extra layers) needs the model's sizes
    fits_only_with_a_model = {"wrong-shape", "integer", "not-orthogonal", "nan", "unknown-name", "extra-layer",
                              "r1-only-st", "r1-only-pt", "non-tensor-pt"}
    assert bool(loaded) == (case in fits_only_with_a_model)


@pytest.mark.parametrize("case,name,content", bad_data_files(), ids=[c for c, _, _ in bad_data_files()])
def test_malformed_data_file(case, name, content, tmp_path, monkeypatch, capsys):
    import rotaquant.jobs.eval as ev

    monkeypatch.setattr(ev, "load_model", lambda *a, **k: (tiny_model("llama"), ByteTokenizer()))
    data = tmp_path / name
    if content is None:
        data.mkdir()
    else:
        data.write_bytes(content)
    out = tmp_path / "out.json"
    code = main(["eval", "-q", "--data", str(data), "--seqlen", "64", "--json", str(out)])
    _assert_named_error(capsys, code, [out], tmp_path)

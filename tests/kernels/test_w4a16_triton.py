"""W4A16 Triton kernels (:mod:`rotaquant.kernels.w4a16_gemv`) against QuantLinear's reference:
the dequantization pass is bit-identical, the few-row matmul and the split-K GEMV equal up to
accumulation order. Run on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``),
where the GEMV runs fixed configs (the autotuner needs a GPU to time them)."""

import pytest
import torch

from rotaquant.kernels import w4a16_gemv
from rotaquant.quant.quantizer import QuantSpec
from tests.quant.test_qlinear import make_layer

from .triton_env import DEVICE, INTERPRET, ON_GPU, TRITON_MARKS

pytestmark = TRITON_MARKS

SPECS = {
    "sym g32": QuantSpec(bits=4, group_size=32),
    "asym g64": QuantSpec(bits=4, symmetric=False, group_size=64),
    "sym g128": QuantSpec(bits=4, group_size=128),
    "asym per-channel": QuantSpec(bits=4, symmetric=False),
    "int3 g64": QuantSpec(bits=3, group_size=64),
}


def _layer(out_f, in_f, spec, seed=0):
    layer, _ = make_layer(out_f, in_f, spec, seed=seed)
    ops = w4a16_gemv.pack_w4(layer.int_codes(), layer.scale, layer.zero)
    return layer, {k: v.to(DEVICE) for k, v in ops.items()}


@pytest.mark.parametrize("in_f", [576, 1024])
@pytest.mark.parametrize("name", list(SPECS))
# bfloat16 only on the GPU: the interpreter rounds float32 -> bfloat16 toward zero, the GPU to nearest even
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32] + ([torch.bfloat16] if ON_GPU else []), ids=str)
def test_dequantize_is_bit_identical(name, in_f, dtype):
    spec = SPECS[name]
    if in_f % (spec.group_size or 1):
        pytest.skip("groups must divide the input size")
    layer, ops = _layer(40, in_f, spec)
    got = w4a16_gemv.w4_dequantize(ops, spec.group_size, dtype)
    assert got.dtype == dtype and got.shape == (40, in_f)
    assert torch.equal(got.cpu(), layer.dequantize(dtype))


def test_k_tiles_cover_smollm2_shapes():
    assert w4a16_gemv.block_k_for(576, 64) == 64  # SmolLM2 hidden 576 in groups of 64
    assert w4a16_gemv.block_k_for(576, None) == 64
    assert w4a16_gemv.block_k_for(1536, 128) == 512
    assert w4a16_gemv.block_k_for(576, 128) is None  # 576 is 4.5 groups of 128


@pytest.mark.parametrize("gemv_max_rows", [0, 4])  # 0: the tl.dot kernel for every row count
@pytest.mark.parametrize("rows", [1, 7, 16])
@pytest.mark.parametrize("name", ["asym g64", "sym g128", "asym per-channel"])
@pytest.mark.skipif(INTERPRET, reason="the autotuner needs a GPU driver; the interpreter (Triton 3.6) also "
                    "cannot run a loop bounded by a runtime argument")
def test_matmul_matches_reference(name, rows, gemv_max_rows, monkeypatch):
    monkeypatch.setattr(w4a16_gemv, "GEMV_MAX_ROWS", gemv_max_rows)
    spec = SPECS[name]
    in_f = 576 if name != "sym g128" else 1024
    layer, ops = _layer(48, in_f, spec)
    x = torch.randn(rows, in_f, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    ref = torch.nn.functional.linear(x.float(), layer.dequantize(torch.float16).float())
    got = w4a16_gemv.w4a16_matmul(x.to(DEVICE), ops, spec.group_size).cpu()
    assert got.dtype == torch.float16 and got.shape == (rows, 48)
    assert ((got.float() - ref).abs().max() / ref.abs().max()).item() < 2e-3



def _relative_error(got, ref):
    return ((got.float() - ref).abs().max() / ref.abs().max()).item()


def _gemv_config(k, group, rows, largest_split):
    """A GEMV config that fits: SPLIT 1 with the first tile, or the largest SPLIT with its first tile."""
    fits = [(sp, bn, bk, w) for bn, bk, w in w4a16_gemv.GEMV_TILES for sp in w4a16_gemv.GEMV_SPLITS
            if w4a16_gemv.gemv_config_ok(bn, bk, sp, w, 2, k, group, 1 << (rows - 1).bit_length())]
    sp, bn, bk, w = max(fits, key=lambda c: c[0]) if largest_split else fits[0]
    return {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT": sp, "num_warps": w, "num_stages": 2}


@pytest.mark.parametrize("largest_split", [False, True], ids=["split1", "splitmax"])
@pytest.mark.parametrize("in_f", [576, 4096])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("name", ["sym g32", "asym g64", "sym g128", "asym per-channel"])
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if ON_GPU else []), ids=str)
def test_gemv_matches_reference(name, rows, in_f, largest_split, dtype):
    """Split-K GEMV at fixed configs (SPLIT 1 writes y itself; more: partials summed by the second
    kernel); 40 outputs are no multiple of BLOCK_N."""
    spec = SPECS[name]
    if in_f % (spec.group_size or 1):
        pytest.skip("groups must divide the input size")
    config = _gemv_config(in_f, spec.group_size, rows, largest_split)
    if largest_split and config["SPLIT"] == 1:
        pytest.skip(f"no SPLIT > 1 fits K={in_f}")
    layer, ops = _layer(40, in_f, spec)
    x = torch.randn(rows, in_f, generator=torch.Generator().manual_seed(rows)).to(dtype)
    ref = torch.nn.functional.linear(x.float(), layer.dequantize(dtype).float())
    got = w4a16_gemv.w4a16_gemv(x.to(DEVICE), ops, spec.group_size, config).cpu()
    assert got.dtype == dtype and got.shape == (rows, 40)
    assert _relative_error(got, ref) < 2e-3
    again = w4a16_gemv.w4a16_gemv(x.to(DEVICE), ops, spec.group_size, config).cpu()
    assert torch.equal(again, got)  # fixed summation order, no atomics


@pytest.mark.skipif(INTERPRET, reason="the autotuner needs a GPU driver")
def test_gemv_autotuned_matches_reference():
    """Through the autotuner (3 rows: its BLOCK_M 4 bucket has the fewest configs to compile;
    export_bench checks the one-row bucket against the reference)."""
    rows = 3
    spec = SPECS["sym g128"]
    layer, ops = _layer(72, 4096, spec)
    x = torch.randn(rows, 4096, generator=torch.Generator().manual_seed(3)).to(torch.float16)
    ref = torch.nn.functional.linear(x.float(), layer.dequantize(torch.float16).float())
    got = w4a16_gemv.w4a16_gemv(x.to(DEVICE), ops, spec.group_size).cpu()
    assert _relative_error(got, ref) < 2e-3


def test_gemv_rejects_a_config_that_does_not_fit_and_more_than_4_rows():
    _, ops = _layer(40, 576, SPECS["asym g64"])
    x = torch.zeros(5, 576, dtype=torch.float16, device=DEVICE)
    config = {"BLOCK_N": 16, "BLOCK_K": 128, "SPLIT": 1, "num_warps": 2, "num_stages": 2}  # 576 = 4.5 x 128
    with pytest.raises(ValueError, match="does not fit K=576"):
        w4a16_gemv.w4a16_gemv(x[:1], ops, 64, config)
    with pytest.raises(ValueError, match="5 rows"):
        w4a16_gemv.w4a16_gemv(x, ops, 64)


@pytest.mark.parametrize(("gemv_max_rows", "rows", "path"),
                         [(4, 1, "gemv"), (4, 4, "gemv"), (4, 5, "tl.dot"), (0, 1, "tl.dot"), (2, 3, "tl.dot")])
def test_matmul_takes_the_gemv_up_to_gemv_max_rows(gemv_max_rows, rows, path, monkeypatch):
    """Which kernel :func:`w4a16_matmul` launches (nothing runs: both are replaced by recorders)."""
    taken = []

    class _Recorder:
        def __getitem__(self, grid):
            return lambda *a, **kw: taken.append("tl.dot")

    monkeypatch.setattr(w4a16_gemv, "GEMV_MAX_ROWS", gemv_max_rows)
    monkeypatch.setattr(w4a16_gemv, "_w4a16_kernel", _Recorder())
    monkeypatch.setattr(w4a16_gemv, "w4a16_gemv", lambda *a, **kw: taken.append("gemv"))
    _, ops = _layer(40, 576, SPECS["asym g64"])
    w4a16_gemv.w4a16_matmul(torch.zeros(rows, 576, dtype=torch.float16, device=DEVICE), ops, 64)
    assert taken == [path]

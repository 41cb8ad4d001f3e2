"""The Triton kernels of int8mm (per-token quantization, epilogue) against int8mm's torch path:
identical codes, scales, zero points, code sums and outputs.

Marked ``gpu``; they also run on CPU under Triton's interpreter (``TRITON_INTERPRET=1``), where
``torch._int_mm`` cannot run on CUDA, so the epilogue's int32 products come from a CPU matmul of
the codes and the end-to-end QuantLinear test is skipped.
"""

from __future__ import annotations

import pytest
import torch

from rotaquant.quant.qlinear import (
    QuantLinear,
    int8_epilogue_torch,
    int8_linear_torch,
    int8_quantize_torch,
)
from rotaquant.quant.quantizer import QuantSpec, quant_params, quantize_to_int, to_groups
from tests.kernels.triton_env import DEVICE, INTERPRET, ON_GPU, TRITON_MARKS

pytest.importorskip("triton")  # the kernel module imports Triton (CPU-only installs have none)
from rotaquant.kernels.int8_linear import int8_epilogue, int8_linear, quantize_rows  # noqa: E402

pytestmark = TRITON_MARKS

SPECS = {
    "int8 sym": QuantSpec(8),
    "int4 sym": QuantSpec(4),
    "int8 asym": QuantSpec(8, symmetric=False),
    "int4 asym": QuantSpec(4, symmetric=False),
    "int4 sym full grid": QuantSpec(4, sym_grid="full"),
    "int8 sym clip 0.9": QuantSpec(8, clip_ratio=0.9),
    "int4 asym clip 0.85": QuantSpec(4, symmetric=False, clip_ratio=0.85),
    "int2 asym": QuantSpec(2, symmetric=False),
    "int3 sym full clip 0.95": QuantSpec(3, sym_grid="full", clip_ratio=0.95),
}
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _input(rows, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * torch.rand(rows, 1, generator=g) * 4
    x[:, :2] *= 30  # outlier channels
    x[0] = 0.0  # all zeros: scale 1, zero 0
    if rows > 1:
        x[1] = 0.5  # constant (asymmetric: the range is widened to contain 0)
    if rows > 2:
        x[2] = -x[2].abs() - 0.1  # all negative
    return x.to(dtype).to(DEVICE)


def _check_codes(x, spec, **kw):
    got = quantize_rows(x, spec, **kw)
    ref = int8_quantize_torch(x, spec)
    for name, a, b in zip(("codes", "scale", "zero", "xsum"), got, ref, strict=True):
        assert a.dtype == b.dtype, name
        assert torch.equal(a[: x.shape[0]], b), f"{name}: {(a[: x.shape[0]] != b).sum().item()} differ"
    return got


@pytest.mark.parametrize("rows", [1, 3, 17, 64])
@pytest.mark.parametrize("k", [64, 576, 4096])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(SPECS))
def test_quantize_rows_equals_torch(name, dtype, k, rows):
    spec = SPECS[name]
    x = _input(rows, k, dtype, seed=rows * k)
    codes, scale, zero, _ = _check_codes(x, spec)
    # and the torch path is the quantizer's grid: codes - zero reproduce quantize_to_int's
    s, z = quant_params(x, spec)
    q = quantize_to_int(to_groups(x, spec), s, z, spec).reshape(x.shape)
    assert torch.equal((codes.int() - zero[:, None].int()).cpu(), (q - z.reshape(-1, 1).int()).cpu())
    assert torch.equal(scale, s.reshape(-1))


@pytest.mark.parametrize("name", ["int8 sym", "int4 asym clip 0.85"])
def test_quantize_rows_in_chunks(name):
    """Rows wider than one tile are read in chunks (forced small here, the last one partial)."""
    x = _input(5, 576, torch.float16, seed=1)
    _check_codes(x, SPECS[name], block_k=128)


def test_padding_rows_are_zero_and_strided_rows():
    spec = SPECS["int8 asym"]
    base = _input(3, 2 * 64, torch.float16, seed=2)
    x = base[:, :64]  # rows with gaps between them (row stride 128)
    codes, *_ = _check_codes(x, spec, rows_pad=32)
    assert codes.shape == (32, 64) and not codes[3:].any()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("wsym", [True, False], ids=["w sym", "w asym"])
@pytest.mark.parametrize("name", ["int8 sym", "int4 asym", "int8 asym"])
def test_epilogue_equals_torch(name, wsym, dtype, bias):
    spec, m, k, n = SPECS[name], 19, 4096, 136  # k: sums past 2^24 round; n: a partial column tile
    wspec = QuantSpec(8 if "8" in name else 4, symmetric=wsym)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(n, k, generator=g) * 0.02
    sw, zw = quant_params(w, wspec)
    off = 0 if wsym else 2 ** (wspec.bits - 1)
    wq = (quantize_to_int(to_groups(w, wspec), sw, zw, wspec).reshape(n, k) - off).to(torch.int8)
    sw, zw, qsum = sw.reshape(n), zw.reshape(n) - off, wq.float().sum(1)
    b = (torch.randn(n, generator=g) * 0.1).to(dtype) if bias else None
    xq, sx, zx, xsum = int8_quantize_torch(_input(m, k, dtype, seed=4).cpu(), spec)
    acc = xq.int() @ wq.int().t()  # exact int32 products on the CPU (what _int_mm computes)
    ref = int8_epilogue_torch(acc, sx, zx, xsum, sw, zw, qsum, k, dtype, b)
    dev = [t.to(DEVICE) for t in (acc, sx, zx, xsum, sw, zw, qsum)]
    got = int8_epilogue(*dev, k, dtype, None if b is None else b.to(DEVICE))
    assert got.dtype == dtype and got.shape == (m, n)
    if dtype == torch.bfloat16 and not ON_GPU:  # the interpreter's float32 -> bfloat16 cast truncates
        ref = _truncate_bf16(int8_epilogue_torch(acc, sx, zx, xsum, sw, zw, qsum, k, torch.float32))
        ref = ref if b is None else _truncate_bf16(ref.float() + b.float())
    assert torch.equal(got.cpu(), ref), f"{(got.cpu() != ref).sum().item()} differ"


def _truncate_bf16(y):
    """float32 -> bfloat16 rounded toward zero, as Triton's interpreter casts."""
    return (y.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)


def _use_gemm(monkeypatch, choice: str, bk: int = 64) -> None:
    """Select ``int8_linear.INT8_GEMM``; under the interpreter the fused kernel runs with one fixed
    tile of K width ``bk`` (the autotuner benchmarks configurations on a GPU)."""
    from rotaquant.kernels import int8_linear as mod

    if INTERPRET and choice == "triton":
        tuned = mod._int8_gemm_kernel

        class _OneTile:
            def __getitem__(self, grid):
                meta = {"BM": 16, "BN": 32, "BK": bk, "GROUP_M": 8}
                return lambda *a, enable_fp_fusion=False, **kw: tuned.fn[grid(meta)](*a, **kw, **meta)

        monkeypatch.setattr(mod, "_int8_gemm_kernel", _OneTile())
    monkeypatch.setattr(mod, "INT8_GEMM", choice)


@pytest.mark.parametrize("gemm", ["cublas", "triton"])
@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("name", ["int8 sym", "int4 asym"])
def test_int8_linear_equals_torch_path(name, rows, gemm, monkeypatch):
    """The launcher QuantLinear calls: quantize, torch._int_mm (on the CPU under the interpreter,
    then on the padded 32 rows too) or the fused GEMM, epilogue with bias."""
    _use_gemm(monkeypatch, gemm)
    layer = _layer(SPECS[name], torch.float16 if ON_GPU else torch.float32)
    p, x = layer._packed, _input(rows, 512, layer.bias.dtype, seed=7)
    args = (p["w"], p["sw"], p["zw"], p["qsum"], layer.act_spec, layer.bias)
    assert torch.equal(int8_linear(x, *args), int8_linear_torch(x, *args))


def _layer(spec, dtype):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(256, 512, generator=g) * 0.02
    s, z = quant_params(w, spec)
    codes = quantize_to_int(to_groups(w, spec), s, z, spec).reshape(w.shape)
    bias = (torch.randn(256, generator=g) * 0.1).to(dtype)  # scales stay float32
    layer = QuantLinear(codes, s[..., 0], z[..., 0], spec, bias=bias, act_spec=spec).to(DEVICE)
    assert layer.set_kernel("int8mm") == "int8mm"
    return layer


@pytest.mark.skipif(not ON_GPU, reason="torch._int_mm on CUDA needs a GPU")
@pytest.mark.parametrize("rows", [1, 16, 17, 300])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["int8 sym", "int4 asym", "int4 sym full grid"])
def test_quant_linear_int8mm_equals_torch_path(name, dtype, rows, monkeypatch):
    layer = _layer(SPECS[name], dtype)
    x = _input(rows, 512, dtype, seed=6).reshape(1, rows, 512)
    got = layer(x)
    monkeypatch.setenv("ROTAQUANT_QUANT_BACKEND", "reference")
    ref = layer(x)
    assert got.shape == (1, rows, 256) and torch.equal(got, ref)


@pytest.mark.parametrize("rows", [1, 17, 64])
@pytest.mark.parametrize("bk", [64, 128])
@pytest.mark.parametrize("spec_name", ["int8 sym", "int4 asym"])
def test_fused_gemm_equals_the_torch_path(spec_name, rows, bk, monkeypatch):
    """The one-kernel GEMM + epilogue (INT8_GEMM = "triton") gives the torch path's values: the
    int32 accumulation is exact, the epilogue the same arithmetic (K = 576: full K tiles of 64, a
    masked last tile of 128). Under the interpreter with one fixed tile."""
    _use_gemm(monkeypatch, "triton", bk)
    spec = SPECS[spec_name]
    g = torch.Generator().manual_seed(rows)
    k, n = 576, 72
    x = torch.randn(rows, k, generator=g).to(torch.float16)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    sw, zw = torch.rand(n, generator=g) * 0.01, torch.zeros(n)
    qsum, bias = w.float().sum(1), torch.randn(n, generator=g).to(torch.float16)
    dev = [t.to(DEVICE) for t in (x, w, sw, zw, qsum, bias)]
    # the torch path on the same device: torch's CUDA division by a Python number is a multiplication
    # by its reciprocal, so CPU and GPU activation codes may differ by one
    ref = int8_linear_torch(*dev[:5], spec, dev[5]).cpu()
    got = int8_linear(*dev[:5], spec, dev[5]).cpu()
    assert torch.equal(got, ref)

"""The Triton per-row fake quantizer against the torch reference: bit-identical results.

Marked ``gpu``: run with ``-m gpu`` on a CUDA machine with Triton; skipped elsewhere.  They also
run on CPU under Triton's interpreter (``TRITON_INTERPRET=1`` with Triton installed), e.g.
``TRITON_INTERPRET=1 PYTHONPATH=/path/to/triton .venv/bin/python -m pytest -m gpu
tests/kernels/test_fake_quant_triton.py``; there the kernel emulates round-half-even and divides
as torch does on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from rotaquant.kernels.fake_quant import kernel_fake_quantize
from rotaquant.quant.quantizer import ActQuantizer, QuantSpec, fake_quantize, fake_quantize_ste
from tests.kernels.triton_env import DEVICE, ON_GPU, TRITON_MARKS

pytestmark = TRITON_MARKS
ROWS = 2048 if ON_GPU else 37

SPECS = {
    "int4 sym": QuantSpec(4),
    "int4 sym full grid": QuantSpec(4, sym_grid="full"),
    "int4 asym": QuantSpec(4, symmetric=False),
    "int4 sym clip 0.9": QuantSpec(4, clip_ratio=0.9),
    "int4 asym clip 0.85 g32": QuantSpec(4, symmetric=False, group_size=32, clip_ratio=0.85),
    "int8 sym g64": QuantSpec(8, group_size=64),
    "int3 full g48": QuantSpec(3, group_size=48, sym_grid="full"),
    "int2 asym": QuantSpec(2, symmetric=False),
}
WIDTHS = [576, 1536, 64, 96, 100, 3000]  # rows in 2, 2, 1, 2, 3 (last padded) and 4 parts (row_parts)
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if ON_GPU else [])


def _reference(x, spec, monkeypatch):
    monkeypatch.setenv("ROTAQUANT_QUANT_BACKEND", "reference")
    try:
        return fake_quantize(x, spec)
    finally:
        monkeypatch.delenv("ROTAQUANT_QUANT_BACKEND")


def _input(rows, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g) * torch.rand(rows, 1, generator=g) * 4
    x[0] = 0.0  # an all-zero row: scale 1, zeros out
    x[1] = 0.5  # a constant row (asymmetric: the range is widened to contain 0)
    x[2, :3] = torch.tensor([60000.0, -60000.0, 1e-3]) if dtype == torch.float16 else torch.tensor([1e6, -3e5, 1e-3])
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("name", list(SPECS))
def test_kernel_equals_reference(name, n, dtype, monkeypatch):
    spec = SPECS[name]
    if n % (spec.group_size or n):
        pytest.skip(f"group {spec.group_size} does not divide {n}")
    x = _input(ROWS, n, dtype, seed=n)
    got = kernel_fake_quantize(x, spec, backend="triton")
    ref = _reference(x, spec, monkeypatch)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got, ref), f"{(got != ref).sum().item()} elements differ"


def test_row_parts_and_a_range_set_by_the_last_part(monkeypatch):
    """Rows are cut into at most four power-of-two parts (the last padded); the range of a row is
    every part's: its extreme values placed in the last part give the reference's values."""
    from rotaquant.kernels.quant_triton import row_parts

    assert row_parts(576) == (512, 64, 0, 0) and row_parts(11008) == (8192, 2048, 512, 256)
    assert row_parts(3000) == (2048, 512, 256, 256) and row_parts(17) == (16, 16, 0, 0)
    for spec in (QuantSpec(4), QuantSpec(4, symmetric=False)):
        x = _input(8, 3000, torch.float16, seed=5)
        x[3:, -5] = 30.0  # the last part (columns 2816.. of 3000) holds each row's maximum
        x[5:, -1] = -40.0  # and its minimum
        assert torch.equal(kernel_fake_quantize(x, spec, backend="triton"), _reference(x, spec, monkeypatch))


def test_strided_kv_layout_keeps_strides(monkeypatch):
    """Keys/values ``[batch, heads, seq, head_dim]`` as transposed views: no copy, same strides."""
    spec = QuantSpec(4, symmetric=False)
    base = torch.randn(2, 11, 3, 64).to(DEVICE)  # [batch, seq, heads, head_dim]
    k = base.transpose(1, 2)
    got = kernel_fake_quantize(k, spec, backend="triton")
    assert got.stride() == k.stride()
    assert torch.equal(got, _reference(k, spec, monkeypatch))
    sliced = torch.randn(5, 3, 2 * 64).to(DEVICE)[..., :64]  # gaps between rows: a contiguous copy
    assert torch.equal(kernel_fake_quantize(sliced, spec, backend="triton"), _reference(sliced, spec, monkeypatch))


def test_leading_shapes_and_empty(monkeypatch):
    spec = QuantSpec(4, group_size=16)
    x = torch.randn(2, 3, 5, 64).to(DEVICE)
    assert torch.equal(kernel_fake_quantize(x, spec, backend="triton"), _reference(x, spec, monkeypatch))
    empty = torch.randn(0, 64).to(DEVICE)
    assert kernel_fake_quantize(empty, spec, backend="triton").shape == (0, 64)


@pytest.mark.skipif(not ON_GPU, reason="dispatch needs CUDA tensors")
def test_dispatch_on_cuda(monkeypatch):
    """fake_quantize, its STE and the ActQuantizer stage pick the kernel on CUDA and give the
    reference's values; gradients still pass straight through."""
    spec = QuantSpec(4, symmetric=False, group_size=64)
    x = torch.randn(64, 576, device="cuda", dtype=torch.float16)
    ref = _reference(x, spec, monkeypatch)
    assert torch.equal(fake_quantize(x, spec), ref)
    assert torch.equal(ActQuantizer(spec)(x), ref)
    xg = x.float().requires_grad_()
    out = fake_quantize_ste(xg, spec)
    monkeypatch.setenv("ROTAQUANT_QUANT_BACKEND", "reference")
    assert torch.equal(out, fake_quantize_ste(xg, spec))
    monkeypatch.delenv("ROTAQUANT_QUANT_BACKEND")
    out.sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(xg))
    fp8 = QuantSpec(8, type="float")  # not covered: the reference runs
    assert kernel_fake_quantize(x, fp8) is None


@pytest.mark.skipif(not ON_GPU, reason="the fused stages run on CUDA tensors")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_w4a4kv4_model_equals_reference_quantizers(dtype, monkeypatch):
    """A rotated W4A4KV4 model (online R3/R4 fused with their quantizers, per-row kernel at the
    other sites) gives bit-identical logits to the same model with the torch quantizers."""
    from rotaquant.kernels import fused_quant, quant_triton
    from rotaquant.quant.pipeline import quantize
    from rotaquant.rotation.rotate import rotate
    from tests.conftest import tiny_model

    model = tiny_model("llama", dtype=dtype).cuda()
    rotate(model, seed=0, progress=False)
    quantize(model, w_bits=4, a_bits=4, k_bits=4, v_bits=4, a_asym=True, preset="none", progress=False)
    ids = torch.randint(0, 96, (3, 40), generator=torch.Generator().manual_seed(0)).cuda()
    calls = {"fused": 0, "rows": 0}
    fused, rows = fused_quant.hadamard_fake_quantize, quant_triton.launch_fake_quant

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(fused_quant, "hadamard_fake_quantize", count("fused", fused))
    monkeypatch.setattr(quant_triton, "launch_fake_quant", count("rows", rows))
    with torch.no_grad():
        fast = model(ids).logits
        assert calls["fused"] > 0 and calls["rows"] > 0
        monkeypatch.setenv("ROTAQUANT_QUANT_BACKEND", "reference")
        ref = model(ids).logits
    assert torch.equal(fast, ref)

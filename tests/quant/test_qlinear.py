"""QuantLinear kernels against its reference path (dequantize, then matmul): FP8 on CPU, and the
real kernels (int4mm, w4triton, int8mm, fp8mm) on CUDA at LLaMA-7B's layer shapes."""

import pytest
import torch

from rotaquant import kernels
from rotaquant.errors import ConfigError
from rotaquant.quant.qlinear import QuantLinear
from rotaquant.quant.quantizer import (
    QuantSpec,
    fake_quantize,
    quant_params,
    quantize_to_int,
    to_groups,
)

FP8 = QuantSpec(bits=8, type="float")


def make_layer(out_f, in_f, spec, act=None, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.02
    w[:, :3] *= 20  # outlier input channels, as real layers have
    scale, zero = quant_params(w, spec)
    codes = quantize_to_int(to_groups(w, spec), scale, zero, spec).reshape(w.shape)
    return QuantLinear(codes, scale[..., 0], zero[..., 0], spec, act_spec=act).to(device), w


def test_fp8_spec_checks():
    assert str(FP8) == "fp8e4m3 per-row" and FP8.qmax == 448
    with pytest.raises(ConfigError, match="FP8"):
        QuantSpec(bits=4, type="float")
    with pytest.raises(ConfigError, match="FP8"):
        QuantSpec(bits=8, symmetric=False, type="float")
    with pytest.raises(ConfigError, match="type"):
        QuantSpec(bits=8, type="fp8")
    assert QuantSpec.from_dict(FP8.to_dict()) == FP8
    assert QuantSpec.from_dict({"bits": 4}).type == "int"  # specs written before the field


def test_fp8_codes_are_e4m3_and_round_trip():
    x = torch.randn(6, 64) * torch.logspace(-3, 2, 64)
    scale, zero = quant_params(x, FP8)
    codes = quantize_to_int(to_groups(x, FP8), scale, zero, FP8)
    assert codes.dtype == torch.float8_e4m3fn
    assert codes.float().abs().amax(-1).eq(448).all()  # max|x| maps to the largest e4m3 value
    assert torch.equal((codes.float() * scale).reshape(x.shape), fake_quantize(x, FP8))
    # e4m3 has 3 mantissa bits: relative error <= 2^-4 wherever the value is a normal e4m3 number
    y, big = fake_quantize(x, FP8), (x.abs() / scale.reshape(6, 1)) >= 2**-6
    assert ((y - x).abs() <= x.abs() * 2**-4 + 1e-12)[big].all()


def test_fp8_reference_equals_fake_quantized_linear():
    layer, w = make_layer(48, 64, FP8, act=FP8)
    x = torch.randn(2, 5, 64)
    ref = torch.nn.functional.linear(fake_quantize(x, FP8), fake_quantize(w, FP8))
    assert layer.set_kernel("auto") == "reference"  # fp8mm needs CUDA sm89+
    assert torch.equal(layer(x), ref)
    assert "sm89" in layer.supports("fp8mm") or "8.9" in layer.supports("fp8mm")
    for kernel in ("int4mm", "int8mm"):
        assert "FP8" in layer.supports(kernel)


def test_w4triton_needs_cuda():
    layer, _ = make_layer(32, 256, QuantSpec(bits=4, group_size=128))
    assert "CUDA" in layer.supports("w4triton")
    with pytest.raises(ConfigError, match="w4triton"):
        layer.set_kernel("w4triton")


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


SHAPES_7B = [(4096, 4096), (11008, 4096), (4096, 11008)]  # q/k/v/o, gate/up, down


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("out_f,in_f", SHAPES_7B)
@pytest.mark.parametrize("rows", [1, 16, 300])
def test_cuda_kernels_match_reference(out_f, in_f, rows):
    dev, torch_dtype = "cuda", torch.float16
    x = torch.randn(rows, in_f, device=dev, dtype=torch_dtype)
    w4 = "w4triton" if kernels.triton_available() else "int4mm"
    cases = [("int4mm", QuantSpec(bits=4, group_size=128), None, 2e-2),
             ("int4mm", QuantSpec(bits=4, symmetric=False, group_size=128), None, 2e-2),
             (w4, QuantSpec(bits=4, group_size=128), None, 2e-2),
             ("int8mm", QuantSpec(bits=8), QuantSpec(bits=8), 2e-3),
             ("int8mm", QuantSpec(bits=4), QuantSpec(bits=4), 2e-3)]
    if torch.cuda.get_device_capability() >= (8, 9):
        cases.append(("fp8mm", FP8, FP8, 1e-2))
    for kernel, spec, act, tol in cases:
        layer, _ = make_layer(out_f, in_f, spec, act, device=dev)
        ref = layer(x)  # reference path
        if kernel == "int4mm":  # weight-only auto picks w4triton where Triton runs
            layer.set_kernel("int4mm")
        else:
            assert layer.set_kernel("auto") == kernel
        got = layer(x)
        assert got.dtype == torch_dtype and got.shape == ref.shape
        # int4mm runs in bfloat16 (tinygemm), fp8mm writes bfloat16: a few bf16 ulps of the output
        assert _rel(got, ref) <= tol, (kernel, spec, _rel(got, ref))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("out_f,in_f", SHAPES_7B)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_w4triton_matches_reference(out_f, in_f, dtype):
    for spec in (QuantSpec(bits=4, group_size=128), QuantSpec(bits=4, symmetric=False, group_size=64),
                 QuantSpec(bits=4)):
        layer, _ = make_layer(out_f, in_f, spec, device="cuda")
        for rows in (1, 5, 16, 40):  # 40 rows: Triton dequantization + cuBLAS
            x = torch.randn(rows, in_f, device="cuda", dtype=dtype)
            layer.set_kernel("reference")
            ref = layer(x)
            layer.set_kernel("w4triton")
            got = layer(x)
            assert got.dtype == dtype
            if rows <= 16:  # same dequantized weights, float32 accumulation in another order, which
                # can flip the output's last rounding: one ulp is 2^-11 of a value in float16, 2^-8 in
                # bfloat16 (measured on the H200: 2.1e-3 and 2.6e-3 max relative in bfloat16)
                tol = 2e-3 if dtype == torch.float16 else 8e-3
                assert _rel(got, ref) <= tol, (spec, rows, _rel(got, ref))
            else:  # bit-identical weights, the same cuBLAS call
                assert torch.equal(got, ref), (spec, rows, _rel(got, ref))


@pytest.mark.parametrize("kernel", ["auto", "reference"])
def test_reloaded_siblings_quantize_their_shared_input_once(kernel, tmp_path, monkeypatch):
    """q/k/v (and gate/up) of a reloaded W8A8 checkpoint quantize their common input once per
    call, with the same logits as when each quantizes it."""
    import rotaquant
    import rotaquant.quant.qlinear as ql
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    rotaquant.quantize(model, {"w_bits": 8, "a_bits": 8, "preset": "none", "rotate": False}, progress=False)
    rotaquant.export(model, None, tmp_path / "q")
    q, _ = rotaquant.load_model(tmp_path / "q", dtype="float32", device="cpu", kernel=kernel)
    linears = [m for m in q.modules() if isinstance(m, QuantLinear)]
    assert sum(m.shared_act is not None for m in linears) == 5 * q.config.num_hidden_layers
    calls = []
    for name in ("int8_quantize_torch", "fake_quantize"):
        real = getattr(ql, name)
        monkeypatch.setattr(ql, name, lambda *a, _real=real, **kw: calls.append(1) or _real(*a, **kw))
    ids = torch.randint(0, q.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # as generation runs it: inference tensors keep no version counter
        shared = q(ids).logits
    n_shared = len(calls)
    for m in linears:
        m.shared_act = None
    calls.clear()
    with torch.no_grad():
        separate = q(ids).logits
    assert torch.equal(shared, separate)
    assert len(calls) - n_shared == 3 * q.config.num_hidden_layers

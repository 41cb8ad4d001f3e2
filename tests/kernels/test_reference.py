"""CPU tests of the torch reference Hadamard path, the backend dispatch and the fused-quant API."""

from __future__ import annotations

import math

import pytest
import torch

import rotaquant.kernels as kernels
from rotaquant.errors import ConfigError
from rotaquant.kernels import hadamard_fake_quantize, hadamard_quantize
from rotaquant.quant.quantizer import QuantSpec, dequantize, fake_quantize, quant_params, to_groups
from rotaquant.rotation.hadamard import hadamard_matrix, is_constructible
from rotaquant.rotation.transform import (
    BACKEND_ENV,
    hadamard_reference,
    hadamard_transform,
    sylvester_bits,
)

SMALL = [n for n in range(1, 513) if is_constructible(n)]  # every constructible order <= 512
LARGE = [576, 924, 1536, 4096, 4864, 5120]


def _check_dense(n: int) -> None:
    h = hadamard_matrix(n)
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    tol = 1e-12 * max(1.0, math.sqrt(n))
    assert (hadamard_reference(x, normalize=False) - x @ h.T).abs().max().item() <= tol * 10
    assert (hadamard_reference(x) - x @ h.T / math.sqrt(n)).abs().max().item() <= tol
    assert (hadamard_reference(x, transpose=True) - x @ h / math.sqrt(n)).abs().max().item() <= tol


def test_every_small_order_matches_dense():
    assert len(SMALL) > 100
    for n in SMALL:
        _check_dense(n)


@pytest.mark.parametrize("n", LARGE)
def test_large_orders_match_dense(n):
    _check_dense(n)


def test_sylvester_bits():
    assert sylvester_bits(0) == ()
    assert sylvester_bits(6) == (6,)
    assert sylvester_bits(7) == (4, 3)
    assert sylvester_bits(12) == (6, 6)
    assert sylvester_bits(14) == (5, 5, 4)
    assert all(sum(sylvester_bits(k)) == k and max(sylvester_bits(k)) <= 6 for k in range(1, 30))


@pytest.mark.parametrize("n", [12, 20, 36])
@pytest.mark.parametrize("transpose", [False, True])
def test_reference_gradcheck(n, transpose):
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: hadamard_reference(t, True, transpose), (x,))


def test_half_inputs_round_once():
    x = torch.randn(4, 576).half()
    y = hadamard_reference(x)
    assert y.dtype == torch.float16
    assert torch.equal(y, hadamard_reference(x.float()).half())


def test_cpu_dispatch_and_backend_choice(monkeypatch):
    x = torch.randn(2, 80)
    assert not kernels.hadamard_supported(x)  # CPU tensors never take the kernel
    assert "CUDA" in kernels.unsupported_reason(x)
    assert torch.equal(hadamard_transform(x), hadamard_reference(x))
    assert torch.equal(hadamard_transform(x, backend="reference"), hadamard_reference(x))
    with pytest.raises(ConfigError, match="cannot run"):
        hadamard_transform(x, backend="triton")
    with pytest.raises(ConfigError, match="unknown Hadamard backend"):
        hadamard_transform(x, backend="cuda")
    monkeypatch.setenv(BACKEND_ENV, "triton")
    with pytest.raises(ConfigError, match="cannot run"):
        hadamard_transform(x)
    monkeypatch.setenv(BACKEND_ENV, "bogus")
    with pytest.raises(ConfigError, match=BACKEND_ENV):
        hadamard_transform(x)
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert torch.equal(hadamard_transform(x), hadamard_reference(x))


def test_kernels_import_without_triton():
    # importing the package must work on any machine; availability is a plain bool
    assert isinstance(kernels.triton_available(), bool)
    if not torch.cuda.is_available():
        assert kernels.triton_available() is False


SPECS = [QuantSpec(4), QuantSpec(4, symmetric=False), QuantSpec(8, clip_ratio=0.9),
         QuantSpec(4, group_size=16), QuantSpec(3, symmetric=False, group_size=32)]


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_api_reference(spec, dtype):
    x = (torch.randn(2, 3, 576) * 3).to(dtype)
    y = hadamard_transform(x)
    codes, scale, zero = hadamard_quantize(x, spec)
    assert codes.shape == x.shape and codes.dtype == (torch.int8 if spec.symmetric else torch.uint8)
    ref_scale, ref_zero = quant_params(y, spec)
    assert torch.equal(scale, ref_scale) and torch.equal(zero, ref_zero)
    assert scale.shape == (2, 3, 576 // (spec.group_size or 576), 1)
    deq = dequantize(to_groups(codes, spec).int(), scale, zero).reshape(x.shape).to(dtype)
    fq = hadamard_fake_quantize(x, spec)
    assert fq.dtype == dtype and torch.equal(fq, fake_quantize(y, spec))
    assert torch.equal(deq, fq)


def test_fused_api_errors_and_disabled_spec():
    x = torch.randn(2, 64)
    with pytest.raises(ConfigError):
        hadamard_quantize(x, QuantSpec(16))
    with pytest.raises(ConfigError):
        hadamard_quantize(x, QuantSpec(4, group_size=48))
    with pytest.raises(ConfigError):
        hadamard_quantize(x, "int4")
    assert torch.equal(hadamard_fake_quantize(x, QuantSpec(16)), hadamard_transform(x))


def test_fused_fake_quant_straight_through_gradient():
    n = 80
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, n, dtype=torch.float64)
    hadamard_fake_quantize(x, QuantSpec(4)).backward(g)
    assert torch.allclose(x.grad, g @ hadamard_matrix(n) / math.sqrt(n), atol=1e-12)

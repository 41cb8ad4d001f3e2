"""Tests of rotaquant.rotation.transform: the fast Hadamard transform."""

from __future__ import annotations

import math

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.rotation.hadamard import (
    HadamardUnavailableError,
    core_matrix,
    hadamard_factorization,
    hadamard_matrix,
    nearest_constructible_orders,
)
from rotaquant.rotation.online import OnlineHadamard
from rotaquant.rotation.transform import hadamard_transform

POW2 = [2**k for k in range(16)]
MODEL_ORDERS = [576, 1536, 896, 4864, 5120, 8960, 11008, 13824, 14336, 18944, 29568, 64, 80, 96]
PALEY_ORDERS = [4, 12, 20, 28, 36, 76, 108, 140, 148, 344, 924]
ORDERS = sorted(set(POW2 + MODEL_ORDERS + PALEY_ORDERS))
DENSE = [n for n in ORDERS if n <= 5120]  # compared against the full matrix
SAMPLED = [n for n in ORDERS if n > 5120]  # compared against columns built from the definition


def definition_rows(n: int, rows: torch.Tensor) -> torch.Tensor:
    """Rows of H = kron(core(m), sylvester(k)), built from the definition (not the transform)."""
    m, k = hadamard_factorization(n)
    core = core_matrix(m)
    h = 1 << k
    a, b = rows // h, rows % h
    bits = b[:, None] & torch.arange(h)[None, :]
    parity = torch.zeros_like(bits)
    for i in range(max(k, 1)):
        parity ^= (bits >> i) & 1
    return (core[a][:, :, None] * (1.0 - 2.0 * parity.double())[:, None, :]).reshape(len(rows), n)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def inputs(n: int, rows: int = 3, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    return torch.randn(rows, n, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("n", DENSE)
def test_matches_dense(n):
    h = hadamard_matrix(n)
    x = inputs(n)
    ref = x @ h.T
    y = hadamard_transform(x, normalize=False)
    assert y.dtype == torch.float64
    assert (y - ref).abs().max().item() <= 1e-12 * max(1.0, ref.abs().max().item())
    y = hadamard_transform(x)
    assert (y - ref / math.sqrt(n)).abs().max().item() < 1e-12
    y32 = hadamard_transform(x.float())
    assert y32.dtype == torch.float32
    assert rel_err(y32, ref / math.sqrt(n)) < 1e-5


@pytest.mark.parametrize("n", SAMPLED)
def test_matches_definition_sampled_columns(n):
    g = torch.Generator().manual_seed(n + 1)
    cols = torch.unique(
        torch.cat([torch.tensor([0, n - 1]), torch.randint(0, n, (40,), generator=g)])
    )
    rows = definition_rows(n, cols)  # y[:, j] = x @ H[j]
    x = inputs(n)
    ref = x @ rows.T / math.sqrt(n)
    y = hadamard_transform(x)
    assert (y[:, cols] - ref).abs().max().item() < 1e-12
    assert (y.norm(dim=-1) - x.norm(dim=-1)).abs().max().item() < 1e-10  # orthogonal
    y32 = hadamard_transform(x.float())
    assert y32.dtype == torch.float32
    assert rel_err(y32[:, cols], ref) < 1e-5
    assert rel_err(y32, y) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("n", SAMPLED)
def test_matches_dense_big(n):
    h = hadamard_matrix(n, dtype=torch.float32).double()
    x = inputs(n, rows=2)
    assert (hadamard_transform(x, normalize=False) - x @ h.T).abs().max().item() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [64, 80, 576, 4864])
def test_half_precision(dtype, n):
    x = inputs(n, rows=4, dtype=dtype)
    y = hadamard_transform(x)
    assert y.dtype == dtype and y.shape == x.shape
    ref = x.double() @ hadamard_matrix(n).T / math.sqrt(n)
    assert rel_err(y, ref) < (1e-2 if dtype == torch.float16 else 2e-2)


def test_leading_shapes_and_noncontiguous():
    n = 96
    h = hadamard_matrix(n)
    x = torch.randn(2, 3, n, dtype=torch.float64)
    y = hadamard_transform(x)
    assert y.shape == (2, 3, n)
    assert torch.allclose(y, x @ h.T / math.sqrt(n), atol=1e-12, rtol=0)
    xt = torch.randn(n, 5, dtype=torch.float64).T  # non-contiguous rows
    assert torch.allclose(hadamard_transform(xt), xt @ h.T / math.sqrt(n), atol=1e-12, rtol=0)
    v = torch.randn(n, dtype=torch.float64)  # 1-D input
    assert torch.allclose(hadamard_transform(v), h @ v / math.sqrt(n), atol=1e-12, rtol=0)
    assert hadamard_transform(torch.zeros(0, 4, n)).shape == (0, 4, n)


def test_input_untouched_and_involution():
    for n in (64, 80):
        x = torch.randn(4, n)
        keep = x.clone()
        y = hadamard_transform(x)
        assert torch.equal(x, keep)
        # normalised H is orthogonal: applying H.T undoes it, i.e. y @ H == x
        back = y.double() @ hadamard_matrix(n) / math.sqrt(n)
        assert torch.allclose(back, x.double(), atol=1e-5)


def test_small_orders_and_integers():
    x = torch.tensor([[3.0], [-2.0]])
    assert torch.equal(hadamard_transform(x), x)
    assert torch.equal(
        hadamard_transform(torch.tensor([1.0, 1.0]), normalize=False), torch.tensor([2.0, 0.0])
    )
    xi = torch.arange(12).reshape(1, 12)
    y = hadamard_transform(xi, normalize=False)
    assert y.dtype == torch.get_default_dtype()
    assert torch.equal(y.double(), xi.double() @ hadamard_matrix(12).T)


@pytest.mark.parametrize("n", [1, 8, 12, 24, 40])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck(n, normalize):
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: hadamard_transform(t, normalize), (x,))


def test_gradient_is_transpose():
    n = 80
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, n, dtype=torch.float64)
    hadamard_transform(x).backward(g)
    assert torch.allclose(x.grad, g @ hadamard_matrix(n) / math.sqrt(n), atol=1e-12)
    with torch.no_grad():  # no-grad fast path gives the same values
        assert torch.allclose(hadamard_transform(x), hadamard_transform(x.detach()), atol=0)


@pytest.mark.parametrize("n", [6, 22, 92])
def test_unavailable(n):
    with pytest.raises(HadamardUnavailableError) as info:
        hadamard_transform(torch.zeros(2, n))
    below, above = nearest_constructible_orders(n)
    assert f"below {', '.join(map(str, below))}; above {', '.join(map(str, above))}" in str(
        info.value
    )
    with pytest.raises(HadamardUnavailableError):
        OnlineHadamard(n)


def test_bad_inputs():
    with pytest.raises(ConfigError):
        hadamard_transform(torch.tensor(1.0))
    with pytest.raises(ConfigError):
        hadamard_transform([1.0, 2.0])


def test_online_stage():
    mod = OnlineHadamard(80)
    assert mod.n == 80 and list(mod.parameters()) == []
    assert "n=80" in repr(mod)
    x = torch.randn(5, 80)
    assert torch.equal(mod(x), hadamard_transform(x))
    signs = torch.randint(0, 2, (80,)).double() * 2 - 1
    torch.testing.assert_close(OnlineHadamard(80, signs)(x), hadamard_transform(x * signs.float()))
    with pytest.raises(ConfigError):
        mod(torch.randn(5, 64))
    seq = torch.nn.Sequential(torch.nn.Linear(80, 80), mod)
    seq(x).sum().backward()
    assert seq[0].weight.grad is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n", [80, 4864, 11008])
def test_cuda_matches_cpu(dtype, n):
    x = inputs(n, rows=8, dtype=dtype)
    y = hadamard_transform(x.cuda())
    assert y.device.type == "cuda" and y.dtype == dtype
    assert rel_err(y.cpu(), hadamard_transform(x.double())) < (
        2e-2 if dtype == torch.bfloat16 else 1e-5
    )

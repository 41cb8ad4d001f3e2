"""Tests of rotaquant.rotation.hadamard: constructions, factorisation, random rotations."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rotaquant.errors import ConfigError, RotaquantError
from rotaquant.rotation.hadamard import (
    ROTATION_MODES,
    HadamardUnavailableError,
    core_matrix,
    hadamard_factorization,
    hadamard_matrix,
    is_constructible,
    make_rotation,
    nearest_constructible_orders,
    paley1,
    paley2,
    random_hadamard_matrix,
    random_orthogonal_matrix,
    sylvester,
)
from rotaquant.rotation.transform import hadamard_transform

POW2 = [2**k for k in range(16)]
MODEL_ORDERS = [576, 1536, 896, 4864, 5120, 8960, 11008, 13824, 14336, 18944, 29568, 64, 80, 96]
FULL = sorted({n for n in POW2 + MODEL_ORDERS if n <= 5120})  # dense H @ H.T checked exactly
BIG = sorted({n for n in POW2 + MODEL_ORDERS if n > 5120})
PALEY1 = {27: 28, 343: 344, 139: 140, 107: 108, 19: 20, 11: 12, 3: 4, 7: 8, 23: 24}
PALEY2 = {461: 924, 37: 76, 73: 148, 17: 36, 5: 12, 13: 28, 9: 20, 25: 52}
EXPECTED = {
    1: (1, 0),
    2: (1, 1),
    4: (1, 2),
    4096: (1, 12),
    576: (36, 4),
    1536: (12, 7),
    896: (28, 5),
    80: (20, 2),
    96: (12, 3),
    11008: (344, 5),
    29568: (924, 5),
    4864: (76, 6),
    5120: (20, 8),
    8960: (140, 6),
    13824: (108, 7),
    14336: (28, 9),
    18944: (148, 7),
    12: (12, 0),
    28: (28, 0),
}


def assert_hadamard(h: torch.Tensor, n: int) -> None:
    """Exact check: entries +-1 and H @ H.T == n * I in float64."""
    h = h.to(torch.float64)
    assert h.shape == (n, n)
    assert torch.equal(h.abs(), torch.ones_like(h))
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))


def definition_rows(n: int, rows: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """Rows of kron(core(m), sylvester(k)) (or of its transpose) without building the matrix."""
    m, k = hadamard_factorization(n)
    core = core_matrix(m).T if transpose else core_matrix(m)
    h = 1 << k
    a, b = rows // h, rows % h
    d = torch.arange(h)
    bits = b[:, None] & d[None, :]
    parity = torch.zeros_like(bits)
    for i in range(max(k, 1)):
        parity ^= (bits >> i) & 1
    syl_rows = 1.0 - 2.0 * parity.double()  # (-1) ** popcount(b & d)
    return (core[a][:, :, None] * syl_rows[:, None, :]).reshape(len(rows), n)


def sample_rows(n: int, count: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    extra = torch.tensor([0, n - 1, n // 2])
    return torch.unique(torch.cat([extra, torch.randint(0, n, (count,), generator=g)]))


@pytest.mark.parametrize("n", sorted(EXPECTED))
def test_factorization(n):
    assert hadamard_factorization(n) == EXPECTED[n]


@pytest.mark.parametrize("n", POW2 + [2**20])
def test_factorization_powers_of_two(n):
    assert hadamard_factorization(n) == (1, n.bit_length() - 1)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5000))
def test_factorization_is_minimal(n):
    if not is_constructible(n):
        with pytest.raises(HadamardUnavailableError):
            hadamard_factorization(n)
        return
    m, k = hadamard_factorization(n)
    assert m * 2**k == n and is_constructible(m)
    smaller = m
    while smaller % 2 == 0:
        smaller //= 2
        assert not is_constructible(smaller)


@pytest.mark.parametrize(("q", "n"), sorted(PALEY1.items()))
def test_paley1(q, n):
    h = paley1(q)
    assert_hadamard(h, n)
    s = h - torch.eye(n, dtype=h.dtype)
    assert torch.equal(s.T, -s)  # skew-Hadamard


@pytest.mark.parametrize(("q", "n"), sorted(PALEY2.items()))
def test_paley2(q, n):
    h = paley2(q)
    assert_hadamard(h, n)
    assert torch.equal(h, h.T)


@pytest.mark.parametrize("bad", [(paley1, 5), (paley1, 15), (paley2, 7), (paley2, 21)])
def test_paley_rejects_wrong_q(bad):
    fn, q = bad
    with pytest.raises(ConfigError):
        fn(q)


@pytest.mark.parametrize("m", sorted({m for m, _ in EXPECTED.values()} | {4, 24, 144, 240, 400}))
def test_core_matrices_exact(m):
    assert_hadamard(core_matrix(m), m)


@pytest.mark.parametrize("k", range(8))
def test_sylvester(k):
    h = sylvester(k)
    n = 2**k
    assert_hadamard(h, n)
    assert torch.equal(h, h.T)
    assert torch.equal(h, definition_rows(n, torch.arange(n)))


@pytest.mark.parametrize("n", FULL)
def test_hadamard_matrix_exact(n):
    h = hadamard_matrix(n)
    assert h.dtype == torch.float64
    assert_hadamard(h, n)
    m, k = hadamard_factorization(n)
    assert torch.equal(h, torch.kron(core_matrix(m), sylvester(k)))


def check_big(n: int) -> None:
    # float32 is exact here: entries are +-1 and all partial sums are integers below 2**24.
    h = hadamard_matrix(n, dtype=torch.float32)
    assert h.shape == (n, n) and h.dtype == torch.float32
    assert torch.equal(h.abs(), torch.ones_like(h))
    rows = sample_rows(n)
    sub = h[rows]
    assert torch.equal(sub.double(), definition_rows(n, rows))
    eye = torch.zeros(len(rows), n)
    eye[torch.arange(len(rows)), rows] = n
    assert torch.equal(sub @ h.T, eye)


@pytest.mark.parametrize("n", [n for n in BIG if n <= 14336])
def test_hadamard_matrix_big(n):
    check_big(n)


@pytest.mark.slow
@pytest.mark.parametrize("n", [n for n in BIG if n > 14336])
def test_hadamard_matrix_huge(n):
    check_big(n)


@pytest.mark.parametrize("n", BIG)
def test_big_orders_via_transform(n):
    """Without building H: the transform matches the definition, and H[S] @ H.T == n I[S]."""
    rows = sample_rows(n, 8)
    e = torch.zeros(len(rows), n, dtype=torch.float64)
    e[torch.arange(len(rows)), rows] = 1.0
    h_cols = hadamard_transform(e, normalize=False)  # e @ H.T = rows of H.T
    assert torch.equal(h_cols, definition_rows(n, rows, transpose=True))
    h_rows = definition_rows(n, rows)
    assert torch.equal(h_rows.abs(), torch.ones_like(h_rows))
    assert torch.equal(hadamard_transform(h_rows, normalize=False), n * e)


def test_hadamard_matrix_fresh_copy_dtype_device():
    a = hadamard_matrix(12)
    a.zero_()
    assert_hadamard(hadamard_matrix(12), 12)
    assert hadamard_matrix(80, dtype=torch.float32).dtype == torch.float32
    assert hadamard_matrix(80, device="cpu").device.type == "cpu"
    assert hadamard_matrix(1).tolist() == [[1.0]]


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12, 20, 24, 28, 36, 40, 48, 56, 60, 76, 344, 924, 1936])
def test_constructible(n):
    assert is_constructible(n)


@pytest.mark.parametrize("n", [3, 5, 6, 10, 18, 22, 30, 92, 116, 156, 172, 668])
def test_not_constructible(n):
    assert not is_constructible(n)
    with pytest.raises(HadamardUnavailableError):
        hadamard_factorization(n)


def test_nearest_orders():
    assert nearest_constructible_orders(22) == ([12, 16, 20], [24, 28, 32])
    assert nearest_constructible_orders(6) == ([1, 2, 4], [8, 12, 16])
    assert nearest_constructible_orders(92, count=2) == ([84, 88], [96, 100])
    assert nearest_constructible_orders(2) == ([1], [4, 8, 12])


@pytest.mark.parametrize("n", [6, 22, 92])
def test_unavailable_error(n):
    with pytest.raises(HadamardUnavailableError) as info:
        hadamard_matrix(n)
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)
    assert isinstance(err, RotaquantError)
    below, above = nearest_constructible_orders(n)
    msg = str(err)
    assert str(n) in msg and "Paley" in msg and "Sylvester" in msg
    for order in below + above:
        assert str(order) in msg
    assert err.below == below and err.above == above
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == msg


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "12", None])
def test_invalid_orders(bad):
    with pytest.raises(ConfigError):
        hadamard_matrix(bad)
    with pytest.raises(ConfigError):
        is_constructible(bad)


@pytest.mark.parametrize("mode", ROTATION_MODES)
@pytest.mark.parametrize("n", [1, 12, 64, 80, 576])
def test_make_rotation_orthogonal(mode, n):
    r = make_rotation(n, mode=mode, seed=3)
    assert r.shape == (n, n) and r.dtype == torch.float64
    err = (r @ r.T - torch.eye(n, dtype=torch.float64)).abs().max().item()
    assert err < 1e-12
    assert torch.equal(r, make_rotation(n, mode=mode, seed=3))


@pytest.mark.parametrize("mode", ["hadamard", "orthogonal"])
def test_seeds_differ(mode):
    a = make_rotation(64, mode=mode, seed=0)
    b = make_rotation(64, mode=mode, seed=1)
    assert not torch.equal(a, b)


def test_base_hadamard_and_random_signs():
    n = 80
    base = make_rotation(n, mode="base_hadamard", seed=123)
    assert torch.equal(base, hadamard_matrix(n) / math.sqrt(n))
    assert torch.equal(base, make_rotation(n, mode="base_hadamard", seed=7))
    rnd = make_rotation(n, mode="hadamard", seed=5)
    ratio = rnd * math.sqrt(n) / hadamard_matrix(n)  # each row is +-1 times the Hadamard row
    assert torch.equal(ratio, ratio[:, :1].expand(n, n))
    assert set(ratio[:, 0].tolist()) == {-1.0, 1.0}


def test_make_rotation_dtype_and_errors():
    assert make_rotation(12, dtype=torch.float32).dtype == torch.float32
    r = make_rotation(22, mode="orthogonal")  # any order works for orthogonal
    assert (r @ r.T - torch.eye(22, dtype=torch.float64)).abs().max() < 1e-12
    with pytest.raises(HadamardUnavailableError):
        make_rotation(22, mode="hadamard")
    with pytest.raises(ConfigError) as info:
        make_rotation(12, mode="givens")
    for mode in ROTATION_MODES:
        assert mode in str(info.value)


def test_random_generators():
    g1 = torch.Generator().manual_seed(11)
    g2 = torch.Generator().manual_seed(11)
    assert torch.equal(
        random_hadamard_matrix(28, generator=g1), random_hadamard_matrix(28, generator=g2)
    )
    assert torch.equal(random_hadamard_matrix(28, seed=4), random_hadamard_matrix(28, seed=4))
    q1 = random_orthogonal_matrix(30, generator=torch.Generator().manual_seed(2))
    q2 = random_orthogonal_matrix(30, seed=2)
    assert torch.equal(q1, q2)
    assert random_orthogonal_matrix(30, dtype=torch.float32).dtype == torch.float32
    # sign fixing makes diag(R) of Q's own QR positive: Q is the unique Q-factor
    a = torch.randn(30, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = q1.T @ a
    assert (torch.diagonal(r) > 0).all()
    assert torch.allclose(torch.tril(r, -1), torch.zeros_like(r), atol=1e-10)

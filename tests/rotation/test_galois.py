"""Tests of rotaquant.rotation.galois: finite fields GF(p^k) and the quadratic character."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotaquant.errors import ConfigError
from rotaquant.rotation.galois import (
    GaloisField,
    find_irreducible,
    galois_field,
    is_prime_power,
    prime_power,
)

ODD_Q = [3, 5, 7, 9, 11, 13, 25, 27, 49, 81, 121, 125, 243, 343]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (2, (2, 1)),
        (27, (3, 3)),
        (343, (7, 3)),
        (2048, (2, 11)),
        (1999, (1999, 1)),
        (461, (461, 1)),
        (1, None),
        (0, None),
        (12, None),
        (6, None),
        (100, None),
    ],
)
def test_prime_power(q, expected):
    assert prime_power(q) == expected
    assert is_prime_power(q) == (expected is not None)


@pytest.mark.parametrize(
    ("p", "k"), [(2, 2), (2, 3), (2, 8), (3, 2), (3, 3), (5, 2), (7, 3), (3, 5)]
)
def test_irreducible_has_no_small_factor(p, k):
    f = find_irreducible(p, k)
    assert len(f) == k + 1 and f[-1] == 1
    # A root-free check is a full irreducibility proof for k <= 3; for larger k the field
    # tests below (every nonzero element invertible) cover it.
    roots = [x for x in range(p) if sum(c * x**i for i, c in enumerate(f)) % p == 0]
    assert roots == []


@pytest.mark.parametrize("q", [4, 8, 9, 25, 27, 49, 125, 243, 343])
def test_field_axioms_full_tables(q):
    F = GaloisField(q)
    e = F.elements()
    add = F.add(e[:, None], e[None, :])
    mul = F.mul(e[:, None], e[None, :])
    assert np.array_equal(add, add.T) and np.array_equal(mul, mul.T)  # commutative
    assert np.array_equal(add[0], e) and np.array_equal(mul[1], e)  # identities
    assert np.all(mul[0] == 0)
    for row in add:  # additive group: each row a permutation
        assert np.array_equal(np.sort(row), e)
    for row in mul[1:]:  # no zero divisors, every nonzero element invertible
        assert np.array_equal(np.sort(row), e)
    assert np.array_equal(F.sub(add, e[None, :]), np.broadcast_to(e[:, None], add.shape))
    assert np.all(F.add(e, F.sub(0, e)) == 0)
    rng = np.random.default_rng(q)
    a, b, c = rng.integers(0, q, size=(3, 4000))
    assert np.array_equal(F.mul(F.mul(a, b), c), F.mul(a, F.mul(b, c)))
    assert np.array_equal(F.add(F.add(a, b), c), F.add(a, F.add(b, c)))
    assert np.array_equal(F.mul(a, F.add(b, c)), F.add(F.mul(a, b), F.mul(a, c)))


def _pow(F, a, e: int):
    """``a ** e`` in ``F`` by square and multiply (only the tests need powers)."""
    result, base = np.ones_like(np.asarray(a)), np.asarray(a)
    while e:
        if e & 1:
            result = F.mul(result, base)
        base = F.mul(base, base)
        e >>= 1
    return result


def test_frobenius_and_multiplicative_order():
    F = GaloisField(343)
    e = F.elements()
    assert np.all(_pow(F, e[1:], 342) == 1)  # Lagrange in the multiplicative group
    # (a + b)^p == a^p + b^p in characteristic p
    a, b = np.meshgrid(e[:50], e[::7])
    assert np.array_equal(_pow(F, F.add(a, b), 7), F.add(_pow(F, a, 7), _pow(F, b, 7)))
    # some element generates the multiplicative group (the field is cyclic)
    orders_ok = [g for g in e[2:] if all(_pow(F, g, 342 // r) != 1 for r in (2, 3, 19))]
    assert orders_ok


@pytest.mark.parametrize("q", ODD_Q)
def test_quadratic_character(q):
    F = GaloisField(q)
    e = F.elements()
    chi = F.chi(e)
    assert chi[0] == 0
    assert int((chi == 1).sum()) == (q - 1) // 2 == int(F.is_square().sum())
    assert int((chi == -1).sum()) == (q - 1) // 2
    table = F.chi(F.mul(e[:, None], e[None, :]))
    assert np.array_equal(table, chi[:, None] * chi[None, :])  # multiplicative
    assert int(F.chi(F.sub(0, 1))) == (1 if q % 4 == 1 else -1)
    assert int(F.chi(4 % F.p if F.p > 2 else 1)) == 1  # scalars work too


@pytest.mark.parametrize("q", [3, 5, 9, 13, 27, 125, 343, 461])
def test_jacobsthal(q):
    Q = galois_field(q).jacobsthal().astype(np.int64)
    ones = np.ones((q, q), dtype=np.int64)
    assert np.array_equal(Q @ Q.T, q * np.eye(q, dtype=np.int64) - ones)
    assert np.all(Q.sum(axis=1) == 0)
    assert np.array_equal(Q.T, Q if q % 4 == 1 else -Q)


def test_large_field_builds_fast():
    t = time.perf_counter()
    for q in (1999, 2187):
        GaloisField(q).jacobsthal()
    assert time.perf_counter() - t < 5.0


def test_errors():
    with pytest.raises(ConfigError):
        GaloisField(12)
    F = GaloisField(27)
    with pytest.raises(ConfigError):
        F.add(27, 1)
    with pytest.raises(ConfigError):
        F.mul(-1, 1)
    with pytest.raises(ConfigError):
        find_irreducible(4, 2)
    assert galois_field(27) is galois_field(27)
    assert "q=27" in repr(F)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([9, 27, 49, 125, 343, 729]), st.data())
def test_distributive_and_inverse_property(q, data):
    F = galois_field(q)
    a, b, c = (data.draw(st.integers(0, q - 1)) for _ in range(3))
    assert F.mul(a, F.add(b, c)) == F.add(F.mul(a, b), F.mul(a, c))
    assert F.sub(F.add(a, b), b) == a
    if a:
        assert int((F.mul(a, F.elements()) == 1).sum()) == 1  # exactly one inverse
        assert F.chi(F.mul(a, a)) == 1

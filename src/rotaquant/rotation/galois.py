"""Finite fields GF(p^k), just enough of them for Paley's Hadamard constructions.

An element of GF(p^k) is stored as an integer ``0 <= a < q``: its base-``p`` digits are the
coefficients (lowest degree first) of a polynomial over GF(p) of degree below ``k``, taken
modulo a monic irreducible polynomial of degree ``k`` found by search.  Every operation accepts
Python integers or integer numpy arrays (broadcasting like numpy) and returns numpy integers
or arrays, so whole addition tables or quadratic-character tables are built without Python
loops over elements.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from rotaquant.errors import ConfigError

__all__ = [
    "GaloisField",
    "find_irreducible",
    "galois_field",
    "is_prime_power",
    "prime_power",
]


@functools.lru_cache(maxsize=4096)
def prime_power(q: int) -> tuple[int, int] | None:
    """Return ``(p, k)`` with ``q == p**k`` and ``p`` prime, or ``None`` if ``q`` is no prime power."""
    if q < 2:
        return None
    p = next((d for d in range(2, int(q**0.5) + 1) if q % d == 0), q)
    k = 0
    while q % p == 0:
        q //= p
        k += 1
    return (p, k) if q == 1 else None


def is_prime_power(q: int) -> bool:
    """True when ``q`` is ``p**k`` for a prime ``p`` and ``k >= 1``."""
    return prime_power(q) is not None


def _poly_rem(num: list[int], den: list[int], p: int) -> list[int]:
    """Remainder of ``num`` modulo the monic ``den`` over GF(p) (coefficients lowest first)."""
    rem = list(num)
    d = len(den) - 1
    for top in range(len(rem) - 1, d - 1, -1):
        c = rem[top] % p
        if c:
            for i in range(d + 1):
                rem[top - d + i] = (rem[top - d + i] - c * den[i]) % p
    return [c % p for c in rem[:d]]


def _monic_polys(p: int, degree: int):
    """All monic polynomials of the given degree over GF(p), coefficients lowest first."""
    for low in itertools.product(range(p), repeat=degree):
        yield list(low[::-1]) + [1]


@functools.lru_cache(maxsize=256)
def find_irreducible(p: int, k: int) -> tuple[int, ...]:
    """Return the first monic irreducible polynomial of degree ``k`` over GF(p).

    Candidates are scanned in a fixed order (so the result is deterministic); a candidate is
    irreducible when no monic polynomial of degree ``1 .. k // 2`` divides it.  The result holds
    ``k + 1`` coefficients, lowest degree first, the last one being 1.
    """
    if prime_power(p) != (p, 1):
        raise ConfigError(f"find_irreducible needs a prime p, got {p}")
    if k < 1:
        raise ConfigError(f"find_irreducible needs a degree k >= 1, got {k}")
    if k == 1:
        return (0, 1)
    divisors = [f for d in range(1, k // 2 + 1) for f in _monic_polys(p, d)]
    for cand in _monic_polys(p, k):
        if cand[0] == 0:  # divisible by x
            continue
        if all(any(_poly_rem(cand, f, p)) for f in divisors):
            return tuple(cand)
    raise AssertionError(f"no irreducible polynomial of degree {k} over GF({p})")  # unreachable


class GaloisField:
    """The finite field GF(q), ``q = p**k``, with elements encoded as integers ``0 .. q-1``.

    Attributes: ``q``, ``p``, ``k`` and ``modulus`` (the irreducible polynomial, lowest degree
    first; ``(0, 1)`` for a prime field, whose elements are then plain residues mod ``p``).
    """

    def __init__(self, q: int):
        pk = prime_power(int(q))
        if pk is None:
            raise ConfigError(f"GF(q) needs a prime power q, got {q}")
        self.q = int(q)
        self.p, self.k = pk
        self.modulus = find_irreducible(self.p, self.k)
        self._powers = [self.p**i for i in range(self.k)]
        self._is_square: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"GaloisField(q={self.q}, p={self.p}, k={self.k}, modulus={self.modulus})"

    # -- encoding --------------------------------------------------------------------------
    def elements(self) -> np.ndarray:
        """All ``q`` elements, as the integers ``0 .. q-1`` (0 is zero, 1 is one)."""
        return np.arange(self.q, dtype=np.int64)

    def to_digits(self, a) -> np.ndarray:
        """Polynomial coefficients of ``a``: an array of shape ``a.shape + (k,)``."""
        a = np.asarray(a, dtype=np.int64)
        return np.stack([(a // pw) % self.p for pw in self._powers], axis=-1)

    def from_digits(self, digits) -> np.ndarray:
        """Inverse of :meth:`to_digits` (coefficients are reduced mod ``p`` first)."""
        digits = np.asarray(digits, dtype=np.int64) % self.p
        return (digits * np.asarray(self._powers, dtype=np.int64)).sum(axis=-1)

    def _check(self, a) -> np.ndarray:
        a = np.asarray(a, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() >= self.q):
            raise ConfigError(f"GF({self.q}) elements are integers in [0, {self.q}), got {a}")
        return a

    # -- additive group --------------------------------------------------------------------
    def _digitwise(self, a, b, sign: int) -> np.ndarray:
        a, b = self._check(a), self._check(b)
        p = self.p
        if self.k == 1:
            return (a + sign * b) % p
        out = np.zeros(np.broadcast_shapes(a.shape, b.shape), dtype=np.int64)
        for pw in self._powers:
            out += (((a // pw) % p + sign * ((b // pw) % p)) % p) * pw
        return out

    def add(self, a, b) -> np.ndarray:
        """``a + b`` elementwise (numpy broadcasting)."""
        return self._digitwise(a, b, 1)

    def sub(self, a, b) -> np.ndarray:
        """``a - b`` elementwise (numpy broadcasting)."""
        return self._digitwise(a, b, -1)

    # -- multiplicative group --------------------------------------------------------------
    def mul(self, a, b) -> np.ndarray:
        """``a * b`` elementwise (numpy broadcasting): polynomial product modulo ``modulus``."""
        a, b = self._check(a), self._check(b)
        p, k = self.p, self.k
        if k == 1:
            return (a * b) % p
        a, b = np.broadcast_arrays(a, b)
        shape = a.shape
        da, db = self.to_digits(a.reshape(-1)), self.to_digits(b.reshape(-1))
        prod = np.zeros((da.shape[0], 2 * k - 1), dtype=np.int64)
        for i in range(k):
            prod[:, i : i + k] += da[:, i : i + 1] * db
        prod %= p
        low = np.asarray(self.modulus[:k], dtype=np.int64)
        for top in range(2 * k - 2, k - 1, -1):  # x^k == -(f_0 + ... + f_{k-1} x^{k-1})
            c = prod[:, top] % p
            prod[:, top - k : top] = (prod[:, top - k : top] - c[:, None] * low) % p
        return self.from_digits(prod[:, :k]).reshape(shape)

    # -- quadratic character ---------------------------------------------------------------
    def is_square(self) -> np.ndarray:
        """Boolean table of length ``q``: True where the element is a NONZERO square."""
        if self._is_square is None:
            table = np.zeros(self.q, dtype=bool)
            table[self.mul(self.elements(), self.elements())] = True
            table[0] = False
            self._is_square = table
        return self._is_square

    def chi(self, a) -> np.ndarray:
        """Quadratic character: 0 for 0, 1 for nonzero squares, -1 otherwise (int8)."""
        a = self._check(a)
        return np.where(a == 0, 0, np.where(self.is_square()[a], 1, -1)).astype(np.int8)

    def jacobsthal(self) -> np.ndarray:
        """The q x q Jacobsthal matrix ``Q[i, j] = chi(e_i - e_j)`` (int8)."""
        e = self.elements()
        return self.chi(self.sub(e[:, None], e[None, :]))


@functools.lru_cache(maxsize=64)
def galois_field(q: int) -> GaloisField:
    """Cached :class:`GaloisField` for ``q`` (prime power)."""
    return GaloisField(q)

"""Hadamard matrices (Sylvester, Paley I/II, Kronecker products) and random rotations.

Every Hadamard matrix here is defined as ``kron(core(m), sylvester(k))`` where
``(m, k) = hadamard_factorization(n)`` and ``core(m)`` is a +-1 matrix of the smallest
constructible order ``m`` with ``n = m * 2**k``.  A core is a Paley I matrix (order ``q + 1``,
prime power ``q = 3 mod 4``), a Paley II matrix (order ``2 (q + 1)``, prime power
``q = 1 mod 4``), order 1 or 2, or a Kronecker product of smaller cores.
:func:`rotaquant.rotation.transform.hadamard_transform` applies the same matrix in
``O(n log n + n m)``.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np
import torch

from rotaquant.errors import ConfigError
from rotaquant.rotation.galois import galois_field, prime_power

__all__ = [
    "ROTATION_MODES",
    "HadamardUnavailableError",
    "core_matrix",
    "hadamard_factorization",
    "hadamard_matrix",
    "is_constructible",
    "make_rotation",
    "nearest_constructible_orders",
    "paley1",
    "paley2",
    "random_hadamard_matrix",
    "random_orthogonal_matrix",
    "sylvester",
]

ROTATION_MODES = ("hadamard", "base_hadamard", "orthogonal")

CONSTRUCTIONS = (
    "Sylvester (powers of two), Paley I (order q+1, prime power q = 3 mod 4), "
    "Paley II (order 2(q+1), prime power q = 1 mod 4), and Kronecker products of these"
)


class HadamardUnavailableError(ConfigError):
    """No Hadamard construction is known to rotaquant for the requested order.

    ``n``, ``below`` and ``above`` (nearest constructible orders) are kept as attributes.
    """

    def __init__(self, n, count: int = 3):
        self.n = n
        self.below, self.above = (
            nearest_constructible_orders(n, count) if isinstance(n, int) else ([], [])
        )
        below = ", ".join(map(str, self.below)) or "none"
        above = ", ".join(map(str, self.above)) or "none"
        super().__init__(
            f"no Hadamard matrix construction for order {n}. Constructions available: "
            f"{CONSTRUCTIONS}. Nearest constructible orders: below {below}; above {above}. "
            "Pick one of those sizes, or use the 'orthogonal' rotation mode, which works for "
            "any size."
        )

    def __reduce__(self):
        return (type(self), (self.n,))


def _order(n) -> int:
    """Validate an order: a positive integer (bools and floats are refused)."""
    try:
        value = -1 if isinstance(n, bool) else operator.index(n)
    except TypeError:
        value = -1
    if value < 1:
        raise ConfigError(f"matrix order must be a positive integer, got {n!r}")
    return value


# -- which orders exist ---------------------------------------------------------------------
def _paley_kind(n: int) -> tuple[str, int] | None:
    """``("I", q)`` or ``("II", q)`` if ``n`` is a Paley order, preferring Paley I."""
    q = n - 1
    if q % 4 == 3 and prime_power(q):
        return ("I", q)
    if n % 2 == 0:
        q = n // 2 - 1
        if q % 4 == 1 and prime_power(q):
            return ("II", q)
    return None


def _product_split(n: int) -> tuple[int, int] | None:
    """Smallest ``d > 1`` (with ``d <= n // d``) such that ``d`` and ``n // d`` are constructible."""
    for d in range(2, math.isqrt(n) + 1):
        if n % d == 0 and _is_constructible(d) and _is_constructible(n // d):
            return d, n // d
    return None


def is_constructible(n: int) -> bool:
    """True if rotaquant can build a Hadamard matrix of order ``n`` (results are cached).

    Constructible orders are 1, 2, the Paley I and II orders, and products of two constructible
    orders (Kronecker product); other orders that are not 1, 2 or a multiple of 4 have no
    Hadamard matrix at all.
    """
    return _is_constructible(_order(n))


@functools.cache
def _is_constructible(n: int) -> bool:
    if n <= 2:
        return True
    if n % 4:
        return False
    return _paley_kind(n) is not None or _product_split(n) is not None


def nearest_constructible_orders(n: int, count: int = 3) -> tuple[list[int], list[int]]:
    """The ``count`` constructible orders just below and just above ``n`` (both ascending)."""
    below: list[int] = []
    c = n - 1
    while c >= 1 and len(below) < count:
        if _is_constructible(c):
            below.append(c)
        c -= 1
    above: list[int] = []
    c = max(n + 1, 1)
    while len(above) < count:
        if _is_constructible(c):
            above.append(c)
        c += 1
    return sorted(below), above


def hadamard_factorization(n: int) -> tuple[int, int]:
    """Split ``n = m * 2**k`` with the smallest constructible ``m`` (``m = 1`` for powers of 2).

    Raises :class:`HadamardUnavailableError` if ``n`` is not constructible.
    """
    return _factorization(_order(n))


@functools.cache
def _factorization(n: int) -> tuple[int, int]:
    k = (n & -n).bit_length() - 1
    for kk in range(k, -1, -1):
        if _is_constructible(n >> kk):
            return n >> kk, kk
    raise HadamardUnavailableError(n)


# -- constructions --------------------------------------------------------------------------
def sylvester(k: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Sylvester Hadamard matrix of order ``2**k``: ``H[i, j] = (-1) ** popcount(i & j)``.

    Built in place by doubling, so no temporaries larger than the result are allocated.
    """
    k = operator.index(k)
    if k < 0:
        raise ConfigError(f"sylvester(k) needs k >= 0, got {k}")
    n = 1 << k
    h = torch.empty((n, n), dtype=dtype, device=device)
    h[0, 0] = 1
    s = 1
    while s < n:
        top = h[:s, :s]
        h[:s, s : 2 * s] = top
        h[s : 2 * s, :s] = top
        torch.neg(top, out=h[s : 2 * s, s : 2 * s])
        s *= 2
    return h


def _paley_np(q: int, kind: str) -> np.ndarray:
    """Paley I (``kind="I"``, q = 3 mod 4) or Paley II (q = 1 mod 4) matrix as int8."""
    residue = 3 if kind == "I" else 1
    if q % 4 != residue or not prime_power(q):
        raise ConfigError(f"Paley {kind} needs a prime power q = {residue} mod 4, got {q}")
    c = np.zeros((q + 1, q + 1), dtype=np.int8)  # conference matrix [[0, 1], [+-1, Q]]
    c[0, 1:] = 1
    c[1:, 0] = -1 if kind == "I" else 1
    c[1:, 1:] = galois_field(q).jacobsthal()
    if kind == "I":  # c is skew: I + c is a (skew-)Hadamard matrix
        return c + np.eye(q + 1, dtype=np.int8)
    a = np.array([[1, 1], [1, -1]], dtype=np.int8)
    b = np.array([[1, -1], [-1, -1]], dtype=np.int8)
    return np.kron(c, a) + np.kron(np.eye(q + 1, dtype=np.int8), b)


def paley1(q: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Paley I Hadamard matrix of order ``q + 1`` for a prime power ``q = 3 mod 4``.

    ``H = I + S`` with the skew conference matrix ``S = [[0, 1^T], [-1, Q]]``, where
    ``Q[a, b] = chi(a - b)`` is the Jacobsthal matrix of GF(q).
    """
    return torch.from_numpy(_paley_np(q, "I")).to(dtype=dtype, device=device)


def paley2(q: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Paley II Hadamard matrix of order ``2 (q + 1)`` for a prime power ``q = 1 mod 4``.

    ``H = C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]`` with the symmetric conference
    matrix ``C = [[0, 1^T], [1, Q]]``.
    """
    return torch.from_numpy(_paley_np(q, "II")).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=128)
def _core_np(m: int) -> np.ndarray:
    if m == 1:
        out = np.ones((1, 1), dtype=np.int8)
    elif m == 2:
        out = np.array([[1, 1], [1, -1]], dtype=np.int8)
    elif (kind := _paley_kind(m)) is not None:
        out = _paley_np(kind[1], kind[0])
    elif m % 4 == 0 and (split := _product_split(m)) is not None:
        out = np.kron(_core_np(split[0]), _core_np(split[1]))
    else:
        raise HadamardUnavailableError(m)
    out.setflags(write=False)
    return out


def core_matrix(m: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The +-1 core matrix of order ``m`` (Paley I/II, 1, 2 or a Kronecker product of cores).

    The underlying integer matrix is cached; each call returns a fresh tensor.
    """
    return torch.tensor(_core_np(_order(m)), dtype=dtype, device=device)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Exact +-1 Hadamard matrix of order ``n`` (``H @ H.T == n * I``).

    Defined as ``kron(core_matrix(m), sylvester(k))`` with ``(m, k) = hadamard_factorization(n)``.
    Raises :class:`HadamardUnavailableError` when ``n`` is not constructible.
    """
    m, k = hadamard_factorization(n)
    syl = sylvester(k, dtype=dtype, device=device)
    if m == 1:
        return syl
    h = 1 << k
    core = core_matrix(m, dtype=dtype, device=device)
    out = torch.empty((m * h, m * h), dtype=dtype, device=device)
    torch.mul(core.view(m, 1, m, 1), syl.view(1, h, 1, h), out=out.view(m, h, m, h))
    return out


# -- random rotations -----------------------------------------------------------------------
def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None:
        return generator
    if seed is None:
        return None  # torch's global RNG
    return torch.Generator().manual_seed(int(seed))


def random_hadamard_matrix(
    n: int,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> torch.Tensor:
    """Orthogonal ``diag(s) @ hadamard_matrix(n) / sqrt(n)`` with random signs ``s``.

    The signs come from ``generator`` if given, else from a generator seeded with ``seed``, else
    from torch's global RNG.  Computed in float64, then cast to ``dtype``.
    """
    n = _order(n)
    h = hadamard_matrix(n)
    signs = torch.randint(0, 2, (n,), generator=_generator(seed, generator)).double() * 2 - 1
    h.mul_(signs[:, None] / math.sqrt(n))
    return h.to(dtype=dtype, device=device)


def random_orthogonal_matrix(
    n: int,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> torch.Tensor:
    """Haar-random orthogonal matrix: QR of a float64 Gaussian, columns sign-fixed by diag(R)."""
    n = _order(n)
    a = torch.randn((n, n), generator=_generator(seed, generator), dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1
    return (q * sign).to(dtype=dtype, device=device)


def make_rotation(
    n: int,
    mode: str = "hadamard",
    seed: int | None = 0,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> torch.Tensor:
    """Orthogonal ``n x n`` rotation for ``mode`` in :data:`ROTATION_MODES`.

    ``hadamard``: random-sign Hadamard (seeded); ``base_hadamard``: ``hadamard_matrix(n) /
    sqrt(n)`` (deterministic); ``orthogonal``: random orthogonal (seeded, any ``n``).  The same
    ``seed`` gives the same matrix.
    """
    if mode not in ROTATION_MODES:
        raise ConfigError(
            f"unknown rotation mode {mode!r}; choose one of {', '.join(ROTATION_MODES)}"
        )
    n = _order(n)
    if mode == "hadamard":
        r = random_hadamard_matrix(n, seed=seed)
    elif mode == "base_hadamard":
        r = hadamard_matrix(n).div_(math.sqrt(n))
    else:
        r = random_orthogonal_matrix(n, seed=seed)
    return r.to(dtype=dtype, device=device)

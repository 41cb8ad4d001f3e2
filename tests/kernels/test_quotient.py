"""The FMA division of :func:`rotaquant.kernels.hadamard_triton.quotient`, in exact arithmetic.

The kernel path runs only on a GPU (Triton's interpreter does not fuse its FMAs), so this test
checks the algorithm itself: float32 values as exact fractions, every operation rounded once to
the nearest float32 (ties to even), as the GPU's FMUL/FFMA do. For scales and values like the
quantizers' (``scale = amax * rcp``, ``|v| <= amax``), with many values placed within a few ulps
of a rounding tie ``(k + 1/2) scale``, the result must equal the correctly rounded quotient that
torch's division gives, so that ``rint`` picks the same code.
"""

from __future__ import annotations

import math
import random
import struct
from fractions import Fraction

ONE = Fraction(1)


def rn32(v: Fraction) -> Fraction:
    """``v`` rounded to the nearest float32 (normal range), ties to even."""
    if v == 0:
        return Fraction(0)
    sign, a = (-1 if v < 0 else 1), abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    unit = Fraction(2) ** (e - 23)
    m = a / unit  # in [2^23, 2^24)
    whole, rest = divmod(m.numerator, m.denominator)
    rest = Fraction(rest, m.denominator)
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2):
        whole += 1
    return sign * whole * unit


def f32(x: float) -> Fraction:
    return Fraction(struct.unpack("f", struct.pack("f", x))[0])


def fma(a: Fraction, b: Fraction, c: Fraction) -> Fraction:
    return rn32(a * b + c)


def fma_quotient(v: Fraction, s: Fraction) -> Fraction:
    """The kernel's sequence: r = RN(1/s), q = RN(v r), twice q = fma(fma(-s, q, v), r, q)."""
    r = rn32(ONE / s)
    q = rn32(v * r)
    for _ in range(2):
        q = fma(fma(-s, q, v), r, q)
    return q


def test_fma_quotient_is_the_correctly_rounded_division():
    rng = random.Random(0)
    near_ties = 0
    for _ in range(3000):
        amax = f32(10 ** rng.uniform(-6, 4))
        qmax = rng.choice([7, 7.5, 15, 127, 255])
        s = rn32(amax * rn32(ONE / Fraction(qmax)))
        if rng.random() < 0.5:
            v = f32(rng.uniform(-1, 1) * float(amax))
        else:  # within a few ulps of a tie between two codes
            k = rng.randint(-int(qmax), int(qmax) - 1)
            v = rn32((k + Fraction(1, 2)) * s)
            if v:
                ulp = Fraction(2) ** (math.floor(math.log2(abs(float(v)))) - 23)
                v = rn32(v + rng.randint(-3, 3) * ulp)
            near_ties += 1
        assert fma_quotient(v, s) == rn32(v / s), (float(v), float(s))
    assert near_ties > 1000

"""Triton Hadamard transform over the last dim of ``[rows, n]``, optionally fused with quantization.

Imported only when Triton is available (see :mod:`rotaquant.kernels`).

One program loads ``R`` whole rows once, transforms them in registers and writes them once.
With ``n = m * 2**k`` the matrix is ``kron(C, S1, S2)``: ``C`` the ``m x m`` core (``m`` padded to
a power of two, at least 16) and ``S1, S2`` Sylvester factors of at most 128 (read from a small
table of +-1 in the dot's operand dtype, which L1 serves).  Each factor is one ``tl.dot`` on a reshaped view of
the tile; between dots the tile is permuted so the next axis to contract is the last one.  When
``k < 4`` the small Sylvester part is folded into the core.  A core too large for one dot
(padded order above 256) is applied in blocks of output columns, each finished and written
independently (rows are re-read from L2 once per block).

Precision: the ``+-1`` factors are exact in every float format, so the first dot of a float16 or
bfloat16 input is exact; later dots take their float32 operand split into two bfloat16 parts
(three for float32 inputs, i.e. 16 / 24 significant bits), accumulated in float32.  The
normalisation ``1 / sqrt(n)`` is applied once in float32 before the single rounding to the
output dtype.

A random Hadamard's sign flip (``x * signs``, +-1 per column) can be done as the tile is loaded
(``SIGNS``) instead of in a pass of its own. Repeated plain transforms of contiguous inputs can
skip the per-call bookkeeping (:func:`fast_transform`).

Fused quantization (``MODE`` 1: integer codes + scales, ``MODE`` 2: quantize-dequantize) rounds
the transformed values to the input dtype first, then follows the grid of
:mod:`rotaquant.quant.quantizer` exactly: IEEE division (``div_rn``) and round-half-to-even
(``_rint``), as torch does.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from rotaquant.kernels import ceil_div, on_device, pow2_at_least
from rotaquant.kernels.fake_quant import kernel_fake_quantize, rows_view
from rotaquant.rotation.hadamard import core_matrix, hadamard_factorization, sylvester

__all__ = ["Plan", "grid_divisor", "hadamard_autograd", "hadamard_fake_quant_autograd", "launch", "plan_for"]

# Padded elements per program, 4 warps: the best of a (tile, warps) sweep on an H100 at 16384 rows
# (benchmarks/results/hadamard_sweep_h100.json); with a core the larger tile wins (1536: 2.4x vs 3.5x copy)
TILE = 4096
TILE_CORE = 8192
WARPS = 4
MAX_BLOCK = 256  # largest core block applied by one dot (the B operand sits in shared memory)
# Most groups one program's tile is split into for the fused quantizer. On the H200 (Triton 3.6)
# order 14336 in symmetric groups of 64 (256 groups in a 16384-wide tile) gave group maxima of the
# wrong elements in every row, while 128 groups of 128, asymmetric groups of 32 (512 groups) and
# the interpreter were exact; cause not found, so tiles of many groups are not fused (a guard
# wider than the failure): the transform and the fake-quant kernel run separately.
MAX_FUSED_GROUPS = 128
K_BLOCK = 64  # core contraction chunk
# float32 operands are split into bfloat16 parts (float32 range); Triton's CPU interpreter has
# no bfloat16 dot, so there (tests of the kernel logic only) float16 parts are used.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
SPLIT_DTYPE = torch.float16 if _INTERPRET else torch.bfloat16
_SPLIT_TL = tl.float16 if _INTERPRET else tl.bfloat16


# The Sylvester factors (order <= SYL) come from a table in memory, not computed per program: the
# popcount parity, int-to-float and float conversions of a 64 x 64 factor were about 20 of the 24.5
# SASS instructions per element of the 16384 x 4096 transform (compiled for sm_90 offline, stop 22)
SYL = 128  # the largest factor a plan uses (kernels.MAX_SYLVESTER_BITS = 14: two factors of <= 128)

# -- device code ----------------------------------------------------------------------------
_SYL = tl.constexpr(SYL)


@triton.jit
def _sylvester_block(syl_ptr, T: tl.constexpr, F: tl.constexpr, DT: tl.constexpr):
    """The ``F x F`` Sylvester matrix (``F <= SYL``, the top-left block of the order-``SYL`` one) in
    ``DT`` from table ``T`` of ``syl_ptr`` (int16 bits of +-1, see :func:`_sylvester_table`)."""
    i = tl.arange(0, F)
    return tl.load(syl_ptr + T * _SYL * _SYL + i[:, None] * _SYL + i[None, :]).to(DT, bitcast=True)


@triton.jit
def _rint(x, ON_GPU: tl.constexpr):
    """Round half to even (``torch.round``); emulated (exact for ``|x| < 2**23``) off the GPU."""
    if ON_GPU:
        r = libdevice.rint(x)
    else:  # Triton's CPU interpreter has no rint
        f = tl.floor(x)
        d = x - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
        r = tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)
    return r


@triton.jit
def _dot_split(a, b, acc, NSPLIT: tl.constexpr):
    """``acc + a @ b`` for a +-1 matrix ``b``, ``a`` split into ``NSPLIT`` parts of ``b``'s dtype."""
    hi = a.to(b.dtype)
    acc = tl.dot(hi, b, acc)
    if NSPLIT > 1:
        r = a.to(tl.float32) - hi.to(tl.float32)
        mid = r.to(b.dtype)
        acc = tl.dot(mid, b, acc)
        if NSPLIT > 2:
            r = r - mid.to(tl.float32)
            acc = tl.dot(r.to(b.dtype), b, acc)
    return acc


@triton.jit
def _sylvester_stages(z, P: tl.constexpr, F1: tl.constexpr, F2: tl.constexpr,
                      NS1: tl.constexpr, NS2: tl.constexpr, SPLIT_DT: tl.constexpr, syl_ptr, T1: tl.constexpr):
    """Apply ``kron(S(F1), S(F2))`` to the last dim of ``z`` ``[P, F1 * F2]``; float32 result.

    ``NS1 == 1`` means ``z`` is exact in its own (16-bit) dtype, so the first dot runs on it
    directly; otherwise operands are split into ``SPLIT_DT`` (bfloat16) parts. The first dot's
    factor comes from table ``T1`` (in its operand dtype), the second's from table 1 (``SPLIT_DT``).
    """
    if NS1 == 1:
        dt1 = z.dtype
    else:
        dt1 = SPLIT_DT
    if F2 == 1:
        y = _dot_split(z, _sylvester_block(syl_ptr, T1, F1, dt1), tl.zeros([P, F1], tl.float32), NS1)
    else:
        y = tl.reshape(z, [P * F1, F2])
        y = _dot_split(y, _sylvester_block(syl_ptr, T1, F2, dt1), tl.zeros([P * F1, F2], tl.float32), NS1)
        y = tl.reshape(tl.permute(tl.reshape(y, [P, F1, F2]), (0, 2, 1)), [P * F2, F1])
        s1 = _sylvester_block(syl_ptr, 1, F1, SPLIT_DT)
        y = _dot_split(y, s1, tl.zeros([P * F2, F1], tl.float32), NS2)
        y = tl.reshape(tl.permute(tl.reshape(y, [P, F2, F1]), (0, 2, 1)), [P, F1 * F2])
    return y


# How the quantizers divide by the grid's scale on the GPU: "fma" (default), one reciprocal per
# group and FMA corrections (:func:`quotient`); "ieee", IEEE division per element. The same
# quotients; fma is 7-9 % faster (H200, stop 23: fake-quant 16384 x 1536 0.0433 -> 0.0396 ms, fused
# 16384 x 4096 0.168 -> 0.156 ms). Read at import.
QUANT_DIV_ENV = "ROTAQUANT_QUANT_DIV"
_FMA_DIV = tl.constexpr(os.environ.get(QUANT_DIV_ENV, "fma") != "ieee")
_RCP_MIN = tl.constexpr(2.0**-120)  # scales whose reciprocal is a normal float32 (the FMA path's range)
_RCP_MAX = tl.constexpr(2.0**120)


@triton.jit
def quotient(v, scale, ON_GPU: tl.constexpr):
    """``v / scale`` rounded to nearest float32, what torch's division gives (``scale`` broadcast
    over ``v``). On the GPU, when every scale of the tile lies in ``[2^-120, 2^120]`` (unless
    ``ROTAQUANT_QUANT_DIV=ieee``):
    the correctly rounded reciprocal ``r`` once per group, ``q = v r``, then two corrections
    ``q += (v - scale q) r`` on FMAs (the remainder is exact in an FMA; once ``q`` is within an ulp
    the correction rounds to the correctly rounded quotient, Markstein's theorem; checked in exact
    arithmetic by tests/kernels/test_quotient.py): a multiply and four FMAs per element instead of
    the division's reciprocal, refinement and range check. Elsewhere IEEE division per element
    (``div_rn``)."""
    if ON_GPU and _FMA_DIV:
        flat = tl.ravel(scale)
        if (tl.min(flat, axis=0) >= _RCP_MIN) & (tl.max(flat, axis=0) <= _RCP_MAX):
            r = tl.broadcast_to(tl.math.div_rn(tl.zeros_like(scale) + 1.0, scale), v.shape)
            neg = tl.broadcast_to(-scale, v.shape)
            q = v * r
            q = tl.fma(tl.fma(neg, q, v), r, q)
            q = tl.fma(tl.fma(neg, q, v), r, q)
        else:
            q = tl.math.div_rn(v, scale)
    else:
        q = tl.math.div_rn(v, scale)
    return q


@triton.jit
def grid_codes(v, scale, zero, QMIN: tl.constexpr, QMAX: tl.constexpr, ON_GPU: tl.constexpr):
    """The codes of ``v`` on the grid ``(scale, zero)`` (broadcast over ``v``), as float32:
    ``clamp(round_half_even(v / scale) + zero, QMIN, QMAX)``, the quantizer's operation order."""
    q = _rint(quotient(v, scale, ON_GPU), ON_GPU) + zero
    return tl.minimum(tl.maximum(q, QMIN), QMAX)


@triton.jit
def grid_params(lo, hi, clip, rcp, div, SYM: tl.constexpr, QMAX: tl.constexpr, ON_GPU: tl.constexpr):
    """Scale and zero point of :func:`rotaquant.quant.quantizer.params_from_range` from groups'
    ranges ``lo <= 0 <= hi`` (any shape), clipped by ``clip``, in torch's operation order.

    The range is divided by the grid's ``div`` (``QuantSpec.range_divisor``: ``qmax``, or
    ``(2^b - 1) / 2`` for the full symmetric grid) as torch does it on the same device: on CUDA a
    tensor divided by a Python number is multiplied by the float32 reciprocal ``rcp``; on CPU it
    is divided. (``clip > 0`` commutes with the min/max that made ``lo``/``hi``.)
    """
    if SYM:
        rng = tl.maximum(-lo, hi) * clip
    else:
        # min/max around the products keep the compiler from contracting hi * clip - lo into one
        # FMA: torch rounds the product, then the difference (the GPU saw codes move by one)
        lo = tl.minimum(lo * clip, 0.0)
        rng = tl.maximum(hi * clip, 0.0) - lo
    if ON_GPU:
        scale = rng * rcp
    else:
        scale = tl.math.div_rn(rng, tl.zeros_like(rng) + div)
    scale = tl.where(scale > 0, scale, 1.0)
    if SYM:
        zero = tl.zeros_like(scale)
    else:
        zero = tl.minimum(tl.maximum(_rint(tl.math.div_rn(-lo, scale), ON_GPU), 0.0), QMAX)
    return scale, zero


@triton.jit
def _finish(y, rr, rmask, col0, n, G, out_ptr, stride_o, codes_ptr, scale_ptr, zero_ptr, norm, clip,
            rcp, div, R: tl.constexpr, W: tl.constexpr, MODE: tl.constexpr, SYM: tl.constexpr,
            QMIN: tl.constexpr, QMAX: tl.constexpr, GP: tl.constexpr, ON_GPU: tl.constexpr):
    """Scale, round and write the transformed tile ``y`` ``[R, W]`` (columns ``col0 + [0, W)``).

    MODE 0 writes the transform; MODE 1 the codes and scales (and zero points when asymmetric);
    MODE 2 the quantize-dequantized values.  Groups are ``GP`` consecutive columns, ``G`` a row;
    their grid is :func:`grid_params`'s.
    """
    cols = col0 + tl.arange(0, W)
    offs = rr.to(tl.int64)[:, None] * stride_o + cols[None, :]
    msk = rmask[:, None] & (cols < n)[None, :]
    yq = (y * norm).to(out_ptr.dtype.element_ty)
    if MODE == 0:
        tl.store(out_ptr + offs, yq, mask=msk)
    else:
        NG: tl.constexpr = W // GP
        if NG == 1:  # one group per row (per token): reduce the tile as it is, no [R, NG, GP] relayout
            v = yq.to(tl.float32)
            lo = tl.minimum(tl.min(v, axis=1), 0.0)[:, None]
            hi = tl.maximum(tl.max(v, axis=1), 0.0)[:, None]
        else:
            v = tl.reshape(yq.to(tl.float32), [R, NG, GP])
            lo = tl.minimum(tl.min(v, axis=2), 0.0)[:, :, None]
            hi = tl.maximum(tl.max(v, axis=2), 0.0)[:, :, None]
        scale, zero = grid_params(lo, hi, clip, rcp, div, SYM, QMAX, ON_GPU)  # broadcast over v
        q = grid_codes(v, scale, zero, QMIN, QMAX, ON_GPU)
        if MODE == 1:
            tl.store(codes_ptr + offs, tl.reshape(q, [R, W]).to(codes_ptr.dtype.element_ty), mask=msk)
            groups = col0 // GP + tl.arange(0, NG)
            goffs = rr.to(tl.int64)[:, None] * G + groups[None, :]
            gmsk = rmask[:, None] & (groups < G)[None, :]
            tl.store(scale_ptr + goffs, tl.reshape(scale, [R, NG]), mask=gmsk)
            tl.store(zero_ptr + goffs, tl.reshape(zero, [R, NG]), mask=gmsk)
        else:
            deq = (q - zero) * scale
            tl.store(out_ptr + offs, tl.reshape(deq, [R, W]).to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit(do_not_specialize=["rows", "stride_x"])
def _hadamard_kernel(x_ptr, out_ptr, core_ptr, codes_ptr, scale_ptr, zero_ptr, signs_ptr, syl_ptr,
                     rows, n, G, stride_x, stride_o, norm, clip, rcp, div,
                     M: tl.constexpr, MP: tl.constexpr, MK: tl.constexpr, IB: tl.constexpr, KB: tl.constexpr,
                     H: tl.constexpr, F1: tl.constexpr, F2: tl.constexpr, R: tl.constexpr,
                     NS_IN: tl.constexpr, NS: tl.constexpr, MODE: tl.constexpr, SYM: tl.constexpr,
                     QMIN: tl.constexpr, QMAX: tl.constexpr, GP: tl.constexpr,
                     SPLIT_DT: tl.constexpr, ON_GPU: tl.constexpr, SIGNS: tl.constexpr):
    """Program ``(i, j)``: rows ``[i R, (i + 1) R)``, core output block ``j`` (columns
    ``[j IB H, (j + 1) IB H)``). ``SIGNS``: the input is ``x * signs`` (``+-1`` per column, in x's
    dtype: exact), the random Hadamard's sign flip done on load instead of in a pass of its own."""
    rr = tl.program_id(0) * R + tl.arange(0, R)
    rmask = rr < rows
    rows64 = rr.to(tl.int64)
    if MP == 1:  # a pure Sylvester transform: the tile is [R, H]
        jj = tl.arange(0, H)
        xt = tl.load(x_ptr + rows64[:, None] * stride_x + jj[None, :], mask=rmask[:, None], other=0.0)
        if SIGNS:
            xt = xt * tl.load(signs_ptr + jj)[None, :]
        y = _sylvester_stages(xt, R, F1, F2, NS_IN, NS, SPLIT_DT, syl_ptr, 0)
        _finish(y, rr, rmask, 0, n, G, out_ptr, stride_o, codes_ptr, scale_ptr, zero_ptr, norm, clip,
                rcp, div, R, H, MODE, SYM, QMIN, QMAX, GP, ON_GPU)
    elif H == 1:  # core only (small Sylvester parts are folded into it): the tile is [R, IB]
        ii = tl.program_id(1) * IB + tl.arange(0, IB)
        acc = tl.zeros([R, IB], tl.float32)
        for kb in tl.static_range(0, MK, KB):  # chunks past M would add zeros
            kk = kb + tl.arange(0, KB)
            msk = rmask[:, None] & (kk < M)[None, :]
            xt = tl.load(x_ptr + rows64[:, None] * stride_x + kk[None, :], mask=msk, other=0.0)
            if SIGNS:
                xt = xt * tl.load(signs_ptr + kk, mask=kk < M, other=0.0)[None, :]
            c = tl.load(core_ptr + kk[:, None] * MP + ii[None, :])
            acc = _dot_split(xt, c, acc, NS_IN)
        _finish(acc, rr, rmask, tl.program_id(1) * IB, n, G, out_ptr, stride_o, codes_ptr, scale_ptr,
                zero_ptr, norm, clip, rcp, div, R, IB, MODE, SYM, QMIN, QMAX, GP, ON_GPU)
    else:  # core then Sylvester: the tile is [R, IB, H], loaded as [R, H, KB] for the core dot
        jj = tl.arange(0, H)
        ii = tl.program_id(1) * IB + tl.arange(0, IB)
        acc = tl.zeros([R * H, IB], tl.float32)
        for kb in tl.static_range(0, MK, KB):  # chunks past M would add zeros
            kk = kb + tl.arange(0, KB)
            offs = rows64[:, None, None] * stride_x + (kk[None, None, :] * H + jj[None, :, None])
            msk = rmask[:, None, None] & (kk < M)[None, None, :]
            xt = tl.load(x_ptr + offs, mask=msk, other=0.0)
            if SIGNS:
                cols = kk[None, :] * H + jj[:, None]
                xt = xt * tl.load(signs_ptr + cols, mask=(kk < M)[None, :], other=0.0)[None, :, :]
            xt = tl.reshape(xt, [R * H, KB])
            c = tl.load(core_ptr + kk[:, None] * MP + ii[None, :])
            acc = _dot_split(xt, c, acc, NS_IN)
        z = tl.reshape(tl.permute(tl.reshape(acc, [R, H, IB]), (0, 2, 1)), [R * IB, H])
        y = tl.reshape(_sylvester_stages(z, R * IB, F1, F2, NS, NS, SPLIT_DT, syl_ptr, 1), [R, IB * H])
        _finish(y, rr, rmask, tl.program_id(1) * IB * H, n, G, out_ptr, stride_o, codes_ptr,
                scale_ptr, zero_ptr, norm, clip, rcp, div, R, IB * H, MODE, SYM, QMIN, QMAX, GP, ON_GPU)


# -- host code ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Compile-time shape of the kernel for one order ``n`` (see the module docstring)."""

    n: int
    M: int  # core order (with folded Sylvester bits), 1 if none
    MP: int  # padded core order
    IB: int  # core output block (one per program along grid axis 1)
    KB: int  # core contraction block
    MK: int  # where the contraction stops: M rounded up to KB (the padding past it is all zeros)
    H: int  # Sylvester part 2**k (1 when folded into the core)
    F1: int
    F2: int
    R: int  # rows per program
    num_warps: int

    @property
    def width(self) -> int:
        """Padded columns a program finishes at once (quantization groups must divide it)."""
        return self.IB * self.H if self.MP > 1 else self.H

    @property
    def blocks(self) -> int:
        """Programs per row tile (core output blocks covering the ``M`` real core columns)."""
        return ceil_div(self.M, self.IB) if self.MP > 1 else 1


def _tuning() -> tuple[int, int, int, int]:
    """``(tile, warps, block, fold)`` overrides from ``ROTAQUANT_HADAMARD_TILE`` / ``_WARPS`` /
    ``_BLOCK`` / ``_FOLD`` (0, or -1 for the fold, = the default rule), read at import; for tuning
    sweeps, not for everyday use. ``fold``: Sylvester bits folded into a core (``kron(C, S(fold))``),
    which trades a wide Sylvester dot on split operands (order 1536 = 12 * 128: 2 x 128-wide
    bfloat16 dots a value) for a wider core dot on the exact input (48 x 48 padded to 64, then
    32-wide); the default rule is :data:`FOLD_BY_CORE`."""
    env = os.environ
    names = ("TILE", "WARPS", "BLOCK", "FOLD")
    return tuple(int(env.get(f"ROTAQUANT_HADAMARD_{name}", -1 if name == "FOLD" else 0)) for name in names)


# Sylvester bits folded into a core of order m by default (the others: none). H200, 16384 x 1536
# (12 * 128), the transform alone: 0.092 ms unfolded, 0.068 with 1 bit, 0.061 with 2; order 5120
# (20 * 256) gained nothing (0.307 vs 0.314 ms); benchmarks/results/h200_stop22.md
FOLD_BY_CORE = {12: 2}


TUNING = _tuning()


def plan_for(n: int) -> Plan:
    """The kernel shape for order ``n`` (one compiled variant per order, whatever the row count)."""
    return _plan(n, *TUNING)


@functools.lru_cache(maxsize=256)
def _plan(n: int, tile: int, warps: int, block: int, fold: int = 0) -> Plan:
    m, k = hadamard_factorization(n)
    if fold < 0:
        fold = FOLD_BY_CORE.get(m, 0)
    if m > 1 and fold:  # fold Sylvester bits into the core (pure Sylvester orders keep theirs), keeping
        f = max(0, min(fold, k - 4))  # a Sylvester part of >= 16 and a core of one block
        while f and pow2_at_least(m << f, 16) > MAX_BLOCK:
            f -= 1
        m, k = m << f, k - f
    if k < 4:
        M, H, F1, F2 = m << k, 1, 1, 1
    else:
        M, H = m, 1 << k
        F1, F2 = (H, 1) if k <= 7 else (1 << (k - k // 2), 1 << (k // 2))
    if max(F1, F2) > SYL:
        raise ValueError(f"order {n}: a Sylvester factor of {max(F1, F2)} exceeds the kernel's {SYL}")
    if M == 1 and H > 1:
        MP = IB = KB = MK = 1
        need = 1 if F2 > 1 else 16  # the single-factor dot has R rows
    else:
        MP = pow2_at_least(M, 16)
        IB = min(MP, max(16, block)) if block else _output_block(M, MP)
        KB = min(MP, K_BLOCK)
        MK = ceil_div(M, KB) * KB
        need = max(1, 16 // H)  # the core dot has R * H rows
        if F2 == 1 and H > 1:
            need = max(need, 16 // IB)
    per_row = (IB if MP > 1 else 1) * H
    R = max(need, (tile or (TILE if MP == 1 else TILE_CORE)) // per_row)
    num_warps = warps or WARPS
    return Plan(n, M, MP, IB, KB, MK, H, F1, F2, R, num_warps)


def _output_block(M: int, MP: int) -> int:
    """The core output block: the whole padded core up to :data:`MAX_BLOCK`; above it, the block
    (256 or 128) whose blocks cover ``M`` with the fewest padded columns, the wider on
    ties (each block re-reads the rows). Order 11008 = 344 * 32: 3 x 128 columns, not 2 x 256."""
    if MP <= MAX_BLOCK:
        return MP
    return min((MAX_BLOCK, MAX_BLOCK // 2), key=lambda b: (ceil_div(M, b) * b, -b))


@functools.lru_cache(maxsize=128)
def _core_operand(n: int, transpose: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The padded ``[MP, MP]`` right operand ``B`` of the core dot (``B = C.T`` for ``x @ H.T``)."""
    plan = plan_for(n)
    m, k = hadamard_factorization(n)
    core = core_matrix(m)
    folded = (plan.M // m).bit_length() - 1  # Sylvester bits in the core: k when H == 1, else the fold
    if folded:
        core = torch.kron(core, sylvester(folded))
    b = torch.zeros(plan.MP, plan.MP, dtype=torch.float64)
    b[: plan.M, : plan.M] = core if transpose else core.T
    return b.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _sylvester_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The kernel's Sylvester factors for inputs of ``dtype``: ``[2, SYL, SYL]`` int16, the bits of
    the order-``SYL`` Sylvester matrix (+-1, exact in every float format) in the first dot's operand
    dtype (``dtype`` for float16/bfloat16 inputs, else the split dtype), then in the split dtype."""
    first = dtype if dtype in (torch.float16, torch.bfloat16) else SPLIT_DTYPE
    s = sylvester(SYL.bit_length() - 1)
    return torch.stack([s.to(first).view(torch.int16), s.to(SPLIT_DTYPE).view(torch.int16)]).to(device)


# Compiled kernels by everything Triton specialises on (constexprs, dtypes, 16-byte alignment):
# later calls launch them directly, skipping the JIT's argument binding (tens of microseconds).
_COMPILED: dict = {}


def launch_cached(jit_fn, grid, args, num_warps, ptrs, key):
    """``jit_fn[grid](*args, num_warps=num_warps)``, the compiled kernel launched directly after its
    first call. ``key`` must hold everything Triton specialises the kernel on besides the 16-byte
    alignment of ``ptrs`` (the tensor arguments) and the device: constexprs, dtypes, and for
    specialised integer arguments their divisibility by 16, equality to 1 and 64-bit range.
    Returns the compiled kernel when it was launched directly with every pointer 16-byte aligned
    (what :func:`fast_transform` may launch again), else None."""
    aligned = tuple(p.data_ptr() % 16 == 0 for p in ptrs)
    full_key = (jit_fn, key, aligned, ptrs[0].device.index)
    kernel = _COMPILED.get(full_key)
    if kernel is None or _launch_hooked():
        kernel = jit_fn[grid](*args, num_warps=num_warps)  # the JIT's own launch path
        if not _INTERPRET and hasattr(kernel, "packed_metadata"):
            _COMPILED[full_key] = kernel
        return None
    stream = _raw_stream(ptrs[0].device.index)
    kernel.run(grid[0], grid[1] if len(grid) > 1 else 1, 1, stream, kernel.function, kernel.packed_metadata,
               None, None, None, *args)
    return kernel if all(aligned) else None


def _launch_hooked() -> bool:
    """Whether a launch hook (a profiler's) is installed: then launches take the JIT's path."""
    hooks = triton.knobs.runtime
    return _hooked(hooks.launch_enter_hook) or _hooked(hooks.launch_exit_hook)


def _raw_stream(index: int) -> int:
    """The current CUDA stream's handle (torch's cheap accessor, as Triton itself uses)."""
    getter = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if getter is None:
        return torch.cuda.current_stream(index).cuda_stream
    return getter(index)


def _hooked(hook) -> bool:
    """Whether a launch hook (a profiler's) is installed: then launches take the JIT's path."""
    return hook is not None and bool(getattr(hook, "calls", True))


@dataclass(frozen=True)
class _Setup:
    """What a launch of order ``n`` needs besides its tensors and row count (cached per call kind)."""

    plan: Plan
    core_dtype: torch.dtype | None  # of the core operand (looked up per device and direction); None: no core
    norm: float
    clip: float
    rcp: float
    div: float
    groups: int
    sym: bool
    consts: tuple  # the kernel's trailing arguments, from M to SIGNS


@functools.cache  # never evicted: a launch keys its compiled kernel by the setup's identity
def _setup(n: int, dtype: torch.dtype, normalize: bool, mode: int, spec, signs: bool = False) -> _Setup:
    plan = plan_for(n)
    half = dtype in (torch.float16, torch.bfloat16)
    norm = 1.0 / math.sqrt(n) if normalize else 1.0
    sym, qmin, qmax, gp, clip, groups, rcp, div = True, 0, 0, plan.width, 1.0, 1, 1.0, 1.0
    if mode:
        sym, qmin, qmax, clip = spec.symmetric, spec.qmin, spec.qmax, float(spec.clip_ratio)
        div, rcp = grid_divisor(spec)
        gp = spec.group_size if spec.group_size and spec.group_size != n else plan.width
        groups = n // spec.group_size if spec.group_size else 1
    consts = (plan.M, plan.MP, plan.MK, plan.IB, plan.KB, plan.H, plan.F1, plan.F2, plan.R, 1 if half else 3,
              2 if half else 3, mode, sym, qmin, qmax, gp, _SPLIT_TL, not _INTERPRET, signs)
    core_dtype = (dtype if half else SPLIT_DTYPE) if plan.MP > 1 else None
    return _Setup(plan, core_dtype, norm, clip, rcp, div, groups, sym, consts)


def launch(x2: torch.Tensor, normalize: bool, transpose: bool = False, mode: int = 0,
           spec=None, out: torch.Tensor | None = None, signs: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Run the kernel on the 2-D ``x2`` ``[rows, n]`` (last dim contiguous), or on ``x2 * signs``
    when ``signs`` (``[n]``, contiguous, ``+-1`` in x2's dtype and device) is given.

    mode 0: returns ``(y,)``; mode 1: ``(codes, scale, zero)`` with ``scale``/``zero`` float32
    ``[rows, G]`` (``zero`` all zeros when symmetric); mode 2: ``(fake_quantized,)``. Modes 0 and
    2 write into ``out`` when given (``[rows, n]``, row stride ``n``, x2's dtype).
    """
    rows, n = x2.shape
    st = _setup(n, x2.dtype, bool(normalize), mode, spec if mode else None, signs is not None)
    if signs is not None and (signs.shape != (n,) or signs.dtype != x2.dtype or signs.stride() != (1,)):
        raise ValueError(f"launch: signs must be a contiguous [{n}] tensor in {x2.dtype}")
    core = x2 if st.core_dtype is None else _core_operand(n, transpose, st.core_dtype, x2.device)
    syl = _sylvester_table(x2.dtype, x2.device)
    codes = scale = zero = x2  # placeholders for the pointers a mode does not use
    if mode == 1:
        codes = torch.empty(rows, n, dtype=torch.int8 if st.sym else torch.uint8, device=x2.device)
        scale = torch.empty(rows, st.groups, dtype=torch.float32, device=x2.device)
        zero = torch.empty(rows, st.groups, dtype=torch.float32, device=x2.device)
        out = torch.empty(0, dtype=x2.dtype, device=x2.device)
    elif out is None:
        out = torch.empty(rows, n, dtype=x2.dtype, device=x2.device)
    elif out.shape != (rows, n) or out.stride() != (n, 1) or out.dtype != x2.dtype:
        raise ValueError(f"launch: out must be [{rows}, {n}] with row stride {n} in {x2.dtype}")
    if rows:
        stride = x2.stride(0)
        ptrs = (x2, out, core, codes, scale, zero, x2 if signs is None else signs, syl)  # x2: placeholders
        args = (*ptrs, rows, n, st.groups, stride, n, st.norm, st.clip, st.rcp, st.div, *st.consts)
        key = (id(st), rows >= 2**31, stride >= 2**31, stride % 16 == 0)  # st lives as long as the process
        grid = (ceil_div(rows, st.plan.R), st.plan.blocks)
        with on_device(x2.device):  # Triton loads and launches kernels on the current device
            kernel = launch_cached(_hadamard_kernel, grid, args, st.plan.num_warps, ptrs, key)
        if kernel is not None and mode == 0 and not transpose and signs is None and stride == n and rows < 2**31:
            ready = (n, x2.dtype, bool(normalize), x2.device.index)
            if ready not in _READY:  # later contiguous calls of this kind take fast_transform
                _READY[ready] = _Ready(kernel.run, kernel.function, kernel.packed_metadata,
                                       None if st.core_dtype is None else core, syl, st.plan.R, st.plan.blocks,
                                       args[len(ptrs) + 1:])
    if mode == 1:
        return codes, scale, zero
    return (out,)


@dataclass(frozen=True)
class _Ready:
    """A plain transform's launch after its first direct one: the compiled kernel's entry points,
    the core operand (None without a core: the input stands in, as in :func:`launch`), the
    Sylvester table, the row tile, the output blocks and the arguments after ``rows``."""

    run: object
    function: object
    metadata: object
    core: torch.Tensor | None
    syl: torch.Tensor
    R: int
    blocks: int
    tail: tuple


# (n, dtype, normalize, device index) -> _Ready, filled by launch (never evicted: a few per model)
_READY: dict = {}


def fast_transform(x: torch.Tensor, normalize: bool) -> torch.Tensor | None:
    """:func:`transform` of a contiguous ``x`` (no autograd) whose call kind has been launched
    directly before, without redoing that launch's bookkeeping (rows view, setup, argument
    tuple, compiled-kernel key): the same kernel, arguments and output. None when this call
    needs the full path (first calls, misaligned tensors, another current device, launch hooks
    of a profiler, empty inputs); the caller then runs :func:`transform`."""
    n = x.shape[-1]
    index = x.device.index
    ready = _READY.get((n, x.dtype, normalize, index))
    if ready is None or _launch_hooked() or (index is not None and index != torch.cuda.current_device()):
        return None
    rows = x.numel() // n
    if not 0 < rows < 2**31 or x.data_ptr() % 16:
        return None
    out = torch.empty_like(x)
    if out.data_ptr() % 16:
        return None
    ready.run(ceil_div(rows, ready.R), ready.blocks, 1, _raw_stream(index), ready.function, ready.metadata,
              None, None, None, x, out, x if ready.core is None else ready.core, x, x, x, x, ready.syl, rows,
              *ready.tail)
    return out


@functools.lru_cache(maxsize=256)
def grid_divisor(spec) -> tuple[float, float]:
    """``(div, rcp)``: what the range is divided by (``spec.range_divisor``) and its float32
    reciprocal, which torch's CUDA division of a tensor by a Python number multiplies by.
    Cached per (frozen) spec: every quantizer launch asks for it."""
    div = float(spec.range_divisor)
    return div, float(np.float32(1.0) / np.float32(div))


def fused_supported(n: int, spec) -> bool:
    """Whether the fused kernel computes ``spec``'s groups for order ``n`` in one pass."""
    if getattr(spec, "type", "int") != "int" or not spec.enabled:
        return False  # FP8 codes: the kernel computes integer grids; the torch reference does FP8
    plan = plan_for(n)
    g = spec.group_size
    if g is None or g == n:  # one group per row: the whole row must be in one block
        return plan.blocks == 1
    return g & (g - 1) == 0 and n % g == 0 and plan.width % g == 0 and plan.width // g <= MAX_FUSED_GROUPS


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


TWO_LAUNCH_ROWS = 4096  # fewer rows: one fused launch, whatever the order (see two_launches)


def two_launches(n: int, rows: int) -> bool:
    """Whether fake quantization after the transform of order ``n`` on ``rows`` rows runs as the
    transform, then the fake-quant kernel (:mod:`rotaquant.kernels.quant_triton`), instead of one
    fused launch: for orders with a core, from :data:`TWO_LAUNCH_ROWS` rows. The values are the
    same (the fused kernel rounds the transform to the input dtype before quantizing), the time is
    not: on an H200, 16384 rows, per-token int4, fused vs two launches: 0.202 vs 0.107 ms at 1536 =
    12 * 128, 0.116 vs 0.068 at 576 = 36 * 16, 0.547 vs 0.497 at 5120 = 20 * 256, but 0.192 vs 0.201
    at 4096 and 0.040 vs 0.054 at 64 (keys, per-head groups), pure Sylvester orders
    (benchmarks/fused_quant_sweep.py, h200_stop22.md). At decode sizes the GPU time is a few
    microseconds either way and the host's is what counts: 16 x 1536 costs the host 33 us as two
    launches against 12 us fused (benchmarks/launch_overhead.py on this CPU)."""
    return rows >= TWO_LAUNCH_ROWS and plan_for(n).MP > 1


def _rowwise(x: torch.Tensor, normalize: bool, transpose: bool = False, mode: int = 0, spec=None,
             signs: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`launch` on the rows of ``x`` (modes 0 and 2: one output row per input row), shaped
    like ``x``; mode 2 where :func:`two_launches` as the transform, then the fake-quant kernel.

    A dense layout whose rows are not one stride apart (queries and keys as transposed
    ``[batch, heads, seq, head_dim]`` views after RoPE) is processed in memory order and the
    output keeps ``x``'s strides, instead of a reshape copying ``x`` first."""
    n = x.shape[-1]
    if mode == 2 and two_launches(n, x.numel() // max(n, 1)):
        out = kernel_fake_quantize(_rowwise(x, normalize, transpose, signs=signs), spec)
        if out is not None:  # None: a spec or backend setting the fake-quant kernel does not take
            return out
    if not x.is_contiguous():
        rows = rows_view(x, n)
        if rows is not None:
            out = torch.empty_like(x)  # same strides: dense and non-overlapping like x
            launch(rows, normalize, transpose, mode, spec, out=rows_view(out, n), signs=signs)
            return out
    return launch(_as_rows(x), normalize, transpose, mode, spec, signs=signs)[0].reshape(x.shape)


def signed(x: torch.Tensor, signs: torch.Tensor, spec=None) -> torch.Tensor:
    """The normalised transform of ``x * signs`` (a random Hadamard), fake-quantized on ``spec``'s
    grid when given: one launch, the sign flip done on load. No autograd; ``signs`` as for
    :func:`launch`. Equals ``transform(x * signs)`` (then the fused quantizer) bit for bit: the
    flip by +-1 is exact in every float dtype."""
    return _rowwise(x, True, False, 2 if spec is not None else 0, spec, signs=signs)


def transform(x: torch.Tensor, normalize: bool, transpose: bool = False) -> torch.Tensor:
    """The kernel transform of ``x`` (any leading shape), no autograd."""
    return _rowwise(x, normalize, transpose)


class _Hadamard(torch.autograd.Function):
    """``y = x @ H.T`` (or ``x @ H``); backward is the same kernel with the core transposed."""

    @staticmethod
    def forward(ctx, x, normalize, transpose):
        ctx.normalize, ctx.transpose = normalize, transpose
        return transform(x, normalize, transpose)

    @staticmethod
    def backward(ctx, grad):
        return _Hadamard.apply(grad, ctx.normalize, not ctx.transpose), None, None


def hadamard_autograd(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """:func:`transform`, differentiable when ``x`` requires grad."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Hadamard.apply(x, bool(normalize), False)
    return transform(x, bool(normalize))


class _HadamardFakeQuant(torch.autograd.Function):
    """Fused transform + fake quantization; straight-through gradient ``grad @ H``."""

    @staticmethod
    def forward(ctx, x, spec, normalize):
        ctx.normalize = normalize
        return _rowwise(x, normalize, False, 2, spec)

    @staticmethod
    def backward(ctx, grad):
        return _Hadamard.apply(grad, ctx.normalize, True), None, None


def hadamard_fake_quant_autograd(x: torch.Tensor, spec, normalize: bool = True) -> torch.Tensor:
    """Fused ``fake_quantize(hadamard(x))``; differentiable (STE) when ``x`` requires grad."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _HadamardFakeQuant.apply(x, spec, bool(normalize))
    return _rowwise(x, bool(normalize), False, 2, spec)

"""GPTQ's column loop inside one block as a single Triton launch (row-parallel).

GPTQ quantizes the columns of a block one after another, and each column's rounding error
updates the block's later columns. Rows are independent: row ``r``'s update uses only row
``r`` and the shared upper factor ``U`` of the inverse Hessian. So each program owns a tile of
``BR`` rows of the block (``BR x BC`` in registers), walks the columns ``[c0, c1)`` in order and
writes the quantized values and the scaled errors; the torch path does the same with about ten
launches per column. Arithmetic matches :func:`rotaquant.quant.gptq.gptq_quantize_weight`'s
torch loop operation by operation in float32: IEEE division (``div_rn``), round half to even,
and no fused multiply-add (``enable_fp_fusion=False``), so the results are bit-identical.

The quantization parameters are given per row and group (``[rows, G]``) with the group of every
block column; groups whose parameters depend on the updated weights are computed by the caller
between launches (it splits the block at the columns where such a group starts).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import ceil_div, pow2_at_least
from .hadamard_triton import _rint

__all__ = ["MAX_BLOCK", "ROWS", "gptq_segment"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_BLOCK = 256  # widest block the register tile holds (wider blocks take the torch loop)
ROWS = 16  # rows per program


@triton.jit
def _column(w, q_tile, e_tile, i, r, c, rmask, width, U, S, Z, GIDX, stride_u, stride_s, QMIN, QMAX,
            ON_GPU: tl.constexpr):
    """Quantize column ``i`` of the row tile ``w`` and spread its error over the later columns."""
    sel = (c == i)[None, :]
    x = tl.sum(tl.where(sel, w, 0.0), axis=1)
    g = tl.load(GIDX + i)
    s = tl.load(S + r * stride_s + g, mask=rmask, other=1.0)
    z = tl.load(Z + r * stride_s + g, mask=rmask, other=0.0)
    code = tl.minimum(tl.maximum(_rint(tl.math.div_rn(x, s), ON_GPU) + z, QMIN), QMAX)
    q = (code - z) * s
    d = tl.load(U + i * stride_u + i)
    err = tl.math.div_rn(x - q, tl.zeros_like(x) + d)
    u = tl.load(U + i * stride_u + c, mask=(c >= i) & (c < width), other=0.0)
    w = w - err[:, None] * u[None, :]
    q_tile = tl.where(sel, q[:, None], q_tile)
    e_tile = tl.where(sel, err[:, None], e_tile)
    return w, q_tile, e_tile


@triton.jit
def _gptq_segment_kernel(W1, Q, E, U, S, Z, GIDX, rows, c0, c1, width, i1,
                         stride_w, stride_q, stride_e, stride_u, stride_s,
                         QMIN, QMAX, BR: tl.constexpr, BC: tl.constexpr, ON_GPU: tl.constexpr):
    """Columns ``[c0, c1)`` of a block ``W1`` ``[rows, width]`` (updated in place): quantized
    values into ``Q``, errors ``(w - q) / U[i, i]`` into ``E``. ``Q``, ``U`` and ``GIDX`` are the
    whole matrices; the block starts at their column (and row of ``U``) ``i1``."""
    Q += i1
    U += i1 * stride_u + i1
    GIDX += i1
    r = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    c = tl.arange(0, BC)
    rmask = r < rows
    tile = rmask[:, None] & (c < width)[None, :]
    w = tl.load(W1 + r[:, None] * stride_w + c[None, :], mask=tile, other=0.0)
    q_tile = tl.zeros([BR, BC], dtype=tl.float32)
    e_tile = tl.zeros([BR, BC], dtype=tl.float32)
    if ON_GPU:
        for i in range(c0, c1):
            w, q_tile, e_tile = _column(w, q_tile, e_tile, i, r, c, rmask, width, U, S, Z, GIDX,
                                        stride_u, stride_s, QMIN, QMAX, ON_GPU)
    else:  # Triton's CPU interpreter cannot loop over a range with runtime bounds
        for i in range(0, BC):
            if (i >= c0) & (i < c1):
                w, q_tile, e_tile = _column(w, q_tile, e_tile, i, r, c, rmask, width, U, S, Z, GIDX,
                                            stride_u, stride_s, QMIN, QMAX, ON_GPU)
    done = rmask[:, None] & ((c >= c0) & (c < c1))[None, :]
    tl.store(W1 + r[:, None] * stride_w + c[None, :], w, mask=tile)
    tl.store(Q + r[:, None] * stride_q + c[None, :], q_tile, mask=done)
    tl.store(E + r[:, None] * stride_e + c[None, :], e_tile, mask=done)


def gptq_segment(W1: torch.Tensor, Q: torch.Tensor, Err1: torch.Tensor, U: torch.Tensor, i1: int,
                 scale: torch.Tensor, zero: torch.Tensor, gidx: torch.Tensor, c0: int, c1: int,
                 qmin: int, qmax: int) -> None:
    """Quantize columns ``[c0, c1)`` of the block ``W1`` ``[rows, width]`` that starts at column
    ``i1`` (float32, contiguous; mutated: the later columns receive the error updates).

    Writes columns ``i1 + [c0, c1)`` of ``Q`` ``[rows, cols]`` and ``[c0, c1)`` of ``Err1``
    (like ``W1``). ``U`` ``[cols, cols]`` is the upper inverse-Hessian factor, ``scale``/``zero``
    ``[rows, G]`` the parameters, ``gidx`` (int32, ``cols``) the group of each column. All float32
    with a contiguous last dim (whole tensors, not column slices: Triton's CPU interpreter reads
    views from their first element)."""
    rows, width = W1.shape
    for name, t in (("W1", W1), ("Q", Q), ("Err1", Err1), ("U", U), ("scale", scale), ("zero", zero)):
        if t.dtype != torch.float32 or t.stride(-1) != 1:
            raise ValueError(f"gptq_segment: {name} must be float32 with a contiguous last dim")
    if rows == 0 or c1 <= c0:
        return
    bc = pow2_at_least(width, 16)
    grid = (ceil_div(rows, ROWS),)
    _gptq_segment_kernel[grid](W1, Q, Err1, U, scale, zero, gidx, rows, c0, c1, width, i1,
                               W1.stride(0), Q.stride(0), Err1.stride(0), U.stride(0), scale.stride(0),
                               float(qmin), float(qmax), BR=ROWS, BC=bc, ON_GPU=not _INTERPRET,
                               num_warps=4, enable_fp_fusion=False)

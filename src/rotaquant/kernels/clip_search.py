"""Triton weight clipping search: every candidate range of a row in one launch.

Imported only when Triton is available (see :mod:`rotaquant.kernels`). The torch search
(:func:`rotaquant.quant.rtn.search_clip_params`) runs ~10 elementwise passes over the whole
weight per candidate range, 100 candidates: about 1000 passes, ~1.6 TB of memory traffic for the
linears of one LLaMA-7B layer. Here a program holds ``R`` rows (groups) in registers (or streams
them in chunks of ``BK`` from the cache when wider), computes each candidate's grid with the
other kernels' arithmetic (:func:`~rotaquant.kernels.hadamard_triton.grid_params`: torch's
operation order, IEEE division, round half to even, the reciprocal torch's CUDA division by a
Python number uses), its error ``sum |q(x) - x|^norm``, and keeps the best; the weight is read
once per candidate from the cache, written never. The grids of the candidates are the torch
search's bit for bit; the error sums differ from torch's by summation order only, so the choice
can differ where two candidates' errors tie to float rounding (both are then optimal).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import ceil_div, on_device, pow2_at_least
from .hadamard_triton import _rint, grid_divisor, grid_params

__all__ = ["MAX_TILE", "search_clip_rows"]

MAX_TILE = 4096  # padded elements a program holds per row pass; wider rows stream in chunks of it
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _err_chunk(v, ok, scale, zero, norm, QMIN: tl.constexpr, QMAX: tl.constexpr, ON_GPU: tl.constexpr):
    """``sum |q(v) - v|^norm`` per row of the chunk ``v`` ``[R, BK]`` (``ok`` masks its padding)."""
    q = _rint(tl.math.div_rn(v, scale[:, None]), ON_GPU) + zero[:, None]
    q = tl.minimum(tl.maximum(q, QMIN), QMAX)
    d = tl.abs((q - zero[:, None]) * scale[:, None] - v)
    if ON_GPU:
        e = libdevice.pow(d, norm)
    else:  # the interpreter: exp2/log2 (0 ** norm = 0)
        e = tl.where(d > 0, tl.exp2(norm * tl.log2(tl.maximum(d, 1e-38))), 0.0)
    return tl.sum(tl.where(ok, e, 0.0), axis=1)


@triton.jit(do_not_specialize=["rows"])
def _clip_search_kernel(x_ptr, factors_ptr, scale_ptr, zero_ptr, rows, n, clip, rcp, div, norm,
                        NF: tl.constexpr, R: tl.constexpr, BK: tl.constexpr, NCHUNK: tl.constexpr,
                        SYM: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, ON_GPU: tl.constexpr):
    """Program ``i``: rows ``[i R, (i + 1) R)`` of ``n`` contiguous float32 values each."""
    rr = tl.program_id(0) * R + tl.arange(0, R)
    live = rr < rows
    base = x_ptr + rr.to(tl.int64)[:, None] * n
    cols = tl.arange(0, BK)
    # the range of each row (torch.aminmax), then times the clip ratio
    ok = live[:, None] & (cols < n)[None, :]
    v = tl.load(base + cols[None, :], mask=ok, other=0.0)
    lo = tl.min(tl.where(ok, v, float("inf")), axis=1)
    hi = tl.max(tl.where(ok, v, float("-inf")), axis=1)
    for c in range(1, NCHUNK):
        cc = c * BK + cols
        okc = live[:, None] & (cc < n)[None, :]
        vc = tl.load(base + cc[None, :], mask=okc, other=0.0)
        lo = tl.minimum(lo, tl.min(tl.where(okc, vc, float("inf")), axis=1))
        hi = tl.maximum(hi, tl.max(tl.where(okc, vc, float("-inf")), axis=1))
    lo = tl.where(live, lo, 0.0) * clip
    hi = tl.where(live, hi, 0.0) * clip
    best_err = tl.full([R], float("inf"), tl.float32)
    best_scale = tl.zeros([R], tl.float32)
    best_zero = tl.zeros([R], tl.float32)
    for i in range(NF):
        p = tl.load(factors_ptr + i)
        # params_from_range(lo * p, hi * p): grid_params multiplies the range by its clip argument
        scale, zero = grid_params(lo, hi, p, rcp, div, SYM, QMAX, ON_GPU)
        if NCHUNK == 1:  # the row is still in registers
            err = _err_chunk(v, ok, scale, zero, norm, QMIN, QMAX, ON_GPU)
        else:
            err = tl.zeros([R], tl.float32)
            for c in range(NCHUNK):
                cc = c * BK + cols
                okc = live[:, None] & (cc < n)[None, :]
                vc = tl.load(base + cc[None, :], mask=okc, other=0.0)
                err += _err_chunk(vc, okc, scale, zero, norm, QMIN, QMAX, ON_GPU)
        better = err < best_err  # strict: ties keep the earlier, larger range (torch's rule)
        best_err = tl.where(better, err, best_err)
        best_scale = tl.where(better, scale, best_scale)
        best_zero = tl.where(better, zero, best_zero)
    tl.store(scale_ptr + rr, best_scale, mask=live)
    tl.store(zero_ptr + rr, best_zero, mask=live)


def search_clip_rows(x2: torch.Tensor, spec, factors: list[float], norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``(scale, zero)`` (float32 ``[rows]``) of each row of the contiguous float32 ``x2``
    ``[rows, n]`` over the range factors ``factors`` (the first must be 1, plain RTN) on
    ``spec``'s integer grid, clipped by ``spec.clip_ratio``; see the module docstring."""
    rows, n = x2.shape
    dev = x2.device
    scale = torch.empty(rows, dtype=torch.float32, device=dev)
    zero = torch.empty(rows, dtype=torch.float32, device=dev)
    if rows == 0:
        return scale, zero
    bk = min(pow2_at_least(n, 16), MAX_TILE)
    r = max(1, MAX_TILE // bk)
    div, rcp = grid_divisor(spec)
    f = torch.tensor(factors, dtype=torch.float32, device=dev)
    with on_device(dev):
        _clip_search_kernel[(ceil_div(rows, r),)](
            x2, f, scale, zero, rows, n, float(spec.clip_ratio), rcp, div, float(norm), len(factors), r, bk,
            ceil_div(n, bk), spec.symmetric, spec.qmin, spec.qmax, not _INTERPRET,
            num_warps=4 if bk * r <= 2048 else 8, enable_fp_fusion=False)
    return scale, zero

"""Triton dynamic fake quantization of rows: one launch reads ``x`` once and writes the result once.

Imported only when Triton is available (see :mod:`rotaquant.kernels`).

Each row of ``[rows, g]`` is one quantization group (a token, a token's group, or a head's
``head_dim``): the host views the tensor's memory as such rows (see
:func:`rotaquant.kernels.fake_quant.rows_view`).  A program loads ``R`` rows in power-of-two
parts (:func:`row_parts`: 576 = 512 + 64, no lanes spent on padding), the last part padded with
zeros where needed; the padding changes neither ``max|x|`` nor the asymmetric range, which is
widened to contain 0 anyway.  The grid arithmetic is the fused Hadamard kernel's
(:func:`~rotaquant.kernels.hadamard_triton.grid_params`, :func:`~rotaquant.kernels.hadamard_triton.grid_codes`,
round half to even, the reciprocal torch's CUDA division by a Python number uses), which equals
:func:`rotaquant.quant.quantizer.fake_quantize` bit for bit.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from . import ceil_div, on_device, pow2_at_least
from .hadamard_triton import grid_codes, grid_divisor, grid_params, launch_cached

__all__ = ["MAX_WIDTH", "launch_fake_quant"]

MAX_WIDTH = 16384  # padded row width one program holds in registers
# Elements per program (R rows of the row parts' width W, R a power of two) and warps: W / 1024
# warps (W rounded up to a power of two; 2..8), one row per program from W = 1024 up. The best of
# a 12-setting sweep on an H200 at 16384 rows with the single padded tile of before the row parts
# (per-token int4; ms, this rule vs a 4096-element tile with 4 warps): 576 wide 0.027 vs 0.036,
# 1536 wide 0.041 vs 0.046, 4096 and 5120 the same; 64-wide rows level
# (benchmarks/fused_quant_sweep.py, h200_stop22.md)
TILE = 1024
# (tile, warps) overrides for tuning sweeps (benchmarks/fused_quant_sweep.py), 0 = the default rule
TUNING = tuple(int(os.environ.get(f"ROTAQUANT_FAKEQUANT_{name}", 0)) for name in ("TILE", "WARPS"))


def _warps(w: int) -> int:
    return min(8, max(2, w // 1024))


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


MAX_PARTS = 4  # a row is cut into at most this many power-of-two parts


@functools.lru_cache(maxsize=256)  # every fake-quant launch asks
def row_parts(g: int) -> tuple[int, ...]:
    """``g`` as descending powers of two (at least 16), at most :data:`MAX_PARTS` of them, the last
    rounded up (its columns past ``g`` masked) when more would be needed; zeros fill the tuple.

    A row is loaded and quantized part by part, so a 576-wide row costs 512 + 64 lanes instead of
    1024 (1536 = 1024 + 512, 5120 = 4096 + 1024, 11008 = 8192 + 2048 + 512 + 256)."""
    parts, rest = [], g
    while rest >= 16 and len(parts) < MAX_PARTS - 1:
        p = 1 << (rest.bit_length() - 1)
        parts.append(p)
        rest -= p
    if rest:
        parts.append(pow2_at_least(rest, 16))
    return tuple(parts) + (0,) * (MAX_PARTS - len(parts))


@triton.jit
def _load_part(x_ptr, rows64, rmask, c0, g, W: tl.constexpr):
    cols = c0 + tl.arange(0, W)
    x = tl.load(x_ptr + rows64[:, None] * g + cols[None, :], mask=rmask[:, None] & (cols < g)[None, :], other=0.0)
    return x.to(tl.float32)


@triton.jit
def _store_part(out_ptr, v, scale, zero, rows64, rmask, c0, g, W: tl.constexpr, QMIN: tl.constexpr,
                QMAX: tl.constexpr, ON_GPU: tl.constexpr):
    """Quantize-dequantize ``v`` ``[R, W]`` (columns ``c0 + [0, W)``) on the rows' grids and store it."""
    q = grid_codes(v, scale[:, None], zero[:, None], QMIN, QMAX, ON_GPU)
    cols = c0 + tl.arange(0, W)
    tl.store(out_ptr + rows64[:, None] * g + cols[None, :], ((q - zero[:, None]) * scale[:, None]).to(
        out_ptr.dtype.element_ty), mask=rmask[:, None] & (cols < g)[None, :])


@triton.jit(do_not_specialize=["rows"])
def _fake_quant_kernel(x_ptr, out_ptr, rows, g, clip, rcp, div, R: tl.constexpr, W1: tl.constexpr,
                       W2: tl.constexpr, W3: tl.constexpr, W4: tl.constexpr, SYM: tl.constexpr,
                       QMIN: tl.constexpr, QMAX: tl.constexpr, ON_GPU: tl.constexpr):
    """Program ``i``: rows ``[i R, (i + 1) R)`` of ``g`` contiguous elements each, in the parts
    ``W1..W4`` of :func:`row_parts` (0: absent). The range of a row covers every part and 0."""
    rr = tl.program_id(0) * R + tl.arange(0, R)
    rmask = rr < rows
    rows64 = rr.to(tl.int64)
    v1 = _load_part(x_ptr, rows64, rmask, 0, g, W1)
    lo = tl.minimum(tl.min(v1, axis=1), 0.0)
    hi = tl.maximum(tl.max(v1, axis=1), 0.0)
    if W2 > 0:
        v2 = _load_part(x_ptr, rows64, rmask, W1, g, W2)
        lo, hi = tl.minimum(lo, tl.min(v2, axis=1)), tl.maximum(hi, tl.max(v2, axis=1))
    if W3 > 0:
        v3 = _load_part(x_ptr, rows64, rmask, W1 + W2, g, W3)
        lo, hi = tl.minimum(lo, tl.min(v3, axis=1)), tl.maximum(hi, tl.max(v3, axis=1))
    if W4 > 0:
        v4 = _load_part(x_ptr, rows64, rmask, W1 + W2 + W3, g, W4)
        lo, hi = tl.minimum(lo, tl.min(v4, axis=1)), tl.maximum(hi, tl.max(v4, axis=1))
    scale, zero = grid_params(lo, hi, clip, rcp, div, SYM, QMAX, ON_GPU)
    _store_part(out_ptr, v1, scale, zero, rows64, rmask, 0, g, W1, QMIN, QMAX, ON_GPU)
    if W2 > 0:
        _store_part(out_ptr, v2, scale, zero, rows64, rmask, W1, g, W2, QMIN, QMAX, ON_GPU)
    if W3 > 0:
        _store_part(out_ptr, v3, scale, zero, rows64, rmask, W1 + W2, g, W3, QMIN, QMAX, ON_GPU)
    if W4 > 0:
        _store_part(out_ptr, v4, scale, zero, rows64, rmask, W1 + W2 + W3, g, W4, QMIN, QMAX, ON_GPU)


def launch_fake_quant(x2: torch.Tensor, out2: torch.Tensor, spec) -> None:
    """Fake-quantize each row of the contiguous ``x2`` ``[rows, g]`` into ``out2`` (same shape
    and dtype) on ``spec``'s integer grid; ``g <= MAX_WIDTH``."""
    rows, g = x2.shape
    if rows == 0:
        return
    parts = row_parts(g)
    w = sum(parts)
    r = 1 << (max(1, (TUNING[0] or TILE) // w).bit_length() - 1)  # rows per program: a power of two
    div, rcp = grid_divisor(spec)
    warps = TUNING[1] or _warps(pow2_at_least(w))
    grid = (ceil_div(rows, r),)
    args = (x2, out2, rows, g, float(spec.clip_ratio), rcp, div, r, *parts, spec.symmetric, spec.qmin, spec.qmax,
            not _INTERPRET)
    # g is specialised (divisible by 16, equal to 1, 32/64-bit); rows is not, but its width is
    key = (x2.dtype, out2.dtype, r, parts, spec.symmetric, spec.qmin, spec.qmax, warps, g % 16 == 0, g == 1,
           rows >= 2**31)
    with on_device(x2.device):
        launch_cached(_fake_quant_kernel, grid, args, warps, (x2, out2), key)

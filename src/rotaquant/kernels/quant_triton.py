"""Triton dynamic fake quantization of rows: one launch reads ``x`` once and writes the result once.

Imported only when Triton is available (see :mod:`rotaquant.kernels`).

Each row of ``[rows, g]`` is one quantization group (a token, a token's group, or a head's
``head_dim``): the host views the tensor's memory as such rows (see
:func:`rotaquant.kernels.fake_quant.rows_view`).  A program loads ``R`` rows padded with zeros
to the power of two ``W >= g``; the padding changes neither ``max|x|`` nor the asymmetric range,
which is widened to contain 0 anyway.  The grid arithmetic is the fused Hadamard kernel's
:func:`~rotaquant.kernels.hadamard_triton._finish` (IEEE division, round half to even, the
reciprocal torch's CUDA division by a Python number uses), which equals
:func:`rotaquant.quant.quantizer.fake_quantize` bit for bit.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import ceil_div, on_device, pow2_at_least
from .hadamard_triton import _finish, grid_divisor, launch_cached

__all__ = ["MAX_WIDTH", "launch_fake_quant"]

MAX_WIDTH = 16384  # padded row width one program holds in registers
# Padded elements per program (R rows of W) and warps: W / 1024 warps (2..8), one row per program
# from W = 1024 up. The best of a 12-setting sweep on an H200 at 16384 rows (per-token int4; ms, new
# rule vs the old 4096-element tile with 4 warps): 576 wide 0.027 vs 0.036, 1536 wide 0.041 vs
# 0.046, 4096 and 5120 the same; 64-wide rows level (benchmarks/fused_quant_sweep.py, h200_stop22.md)
TILE = 1024
# (tile, warps) overrides for tuning sweeps (benchmarks/fused_quant_sweep.py), 0 = the default rule
TUNING = tuple(int(os.environ.get(f"ROTAQUANT_FAKEQUANT_{name}", 0)) for name in ("TILE", "WARPS"))


def _warps(w: int) -> int:
    return min(8, max(2, w // 1024))
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit(do_not_specialize=["rows"])
def _fake_quant_kernel(x_ptr, out_ptr, rows, g, clip, rcp, div, R: tl.constexpr, W: tl.constexpr,
                       SYM: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, ON_GPU: tl.constexpr):
    """Program ``i``: rows ``[i R, (i + 1) R)`` of ``g`` contiguous elements each."""
    rr = tl.program_id(0) * R + tl.arange(0, R)
    rmask = rr < rows
    cols = tl.arange(0, W)
    offs = rr.to(tl.int64)[:, None] * g + cols[None, :]
    x = tl.load(x_ptr + offs, mask=rmask[:, None] & (cols < g)[None, :], other=0.0)
    # MODE 2 (quantize-dequantize), one group per row; norm 1.0 keeps x exactly
    _finish(x.to(tl.float32), rr, rmask, 0, g, 1, out_ptr, g, out_ptr, out_ptr, out_ptr, 1.0, clip, rcp, div,
            R, W, 2, SYM, QMIN, QMAX, W, ON_GPU)


def launch_fake_quant(x2: torch.Tensor, out2: torch.Tensor, spec) -> None:
    """Fake-quantize each row of the contiguous ``x2`` ``[rows, g]`` into ``out2`` (same shape
    and dtype) on ``spec``'s integer grid; ``g <= MAX_WIDTH``."""
    rows, g = x2.shape
    if rows == 0:
        return
    w = pow2_at_least(g, 16)
    r = max(1, (TUNING[0] or TILE) // w)
    div, rcp = grid_divisor(spec)
    warps = TUNING[1] or _warps(w)
    grid = (ceil_div(rows, r),)
    args = (x2, out2, rows, g, float(spec.clip_ratio), rcp, div, r, w, spec.symmetric, spec.qmin, spec.qmax,
            not _INTERPRET)
    # g is specialised (divisible by 16, equal to 1, 32/64-bit); rows is not, but its width is
    key = (x2.dtype, out2.dtype, r, w, spec.symmetric, spec.qmin, spec.qmax, warps, g % 16 == 0, g == 1,
           rows >= 2**31)
    with on_device(x2.device):
        launch_cached(_fake_quant_kernel, grid, args, warps, (x2, out2), key)

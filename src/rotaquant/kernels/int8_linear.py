"""Triton kernels of the ``int8mm`` QuantLinear: per-token activation quantization, then by default
one kernel for the int8 GEMM (tensor cores, exact int32 accumulation) and the zero-point/scale
epilogue (``INT8_GEMM = "triton"``), or ``torch._int_mm`` followed by an epilogue pass ("cublas").

Imported only when Triton is available (see :mod:`rotaquant.kernels`).

With activation codes ``xq = q - off`` (``off = 2^(b-1)`` for asymmetric grids, so 8-bit codes
fit int8; the zero point is shifted alike: ``zx = zero - off``) and weight codes ``wq`` with zero
points ``zw``, the product of the dequantized operands is

    sum_k (xq - zx)(wq - zw) * sx * sw
        = (acc - zw * sum_k xq - zx * sum_k wq + K * zx * zw) * sx * sw,   acc = xq @ wq^T,

so the quantizer writes, besides the codes, each row's scale ``sx``, shifted zero ``zx`` and code
sum; the GEMM computes ``acc`` exactly in int32, and the epilogue applies the rest.

Both kernels do the arithmetic of the torch path of
:meth:`~rotaquant.quant.qlinear.QuantLinear._forward_int8` in the same order, so they give the
same values: the grid (scale, zero, round half to even, IEEE division, torch's CUDA reciprocal
for a division by a Python number) is :func:`~rotaquant.kernels.hadamard_triton.grid_params`,
and floating-point contraction (FMA) is disabled so ``acc - zw * xsum`` rounds twice as torch's
separate kernels do.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import ceil_div, on_device, pow2_at_least
from .hadamard_triton import grid_codes, grid_divisor, grid_params

__all__ = ["INT8_GEMM", "MAX_TILE", "int8_epilogue", "int8_linear", "int8_quantize", "quantize_rows"]

MAX_TILE = 16384  # widest row a program holds in registers (read once); wider rows: chunks, read twice
CHUNK = 8192  # chunk width for rows wider than MAX_TILE
TILE = 4096  # padded elements per quantization program (several rows when K is small)
BLOCK_M, BLOCK_N = 32, 128  # epilogue tile
# "triton": one fused kernel (GEMM + epilogue), the faster on an H200 (figures in qlinear's docstring);
# "cublas": torch._int_mm + the epilogue kernel
INT8_GEMM = "triton"
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _load_chunk(x_ptr, rows64, stride_x, live, c0, K, BK: tl.constexpr):
    cols = c0 + tl.arange(0, BK)
    msk = live[:, None] & (cols < K)[None, :]
    return tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=msk, other=0.0).to(tl.float32)


@triton.jit(do_not_specialize=["rows", "rows_pad", "stride_x"])
def _quant_rows_kernel(x_ptr, codes_ptr, scale_ptr, zero_ptr, sum_ptr, rows, rows_pad, K, stride_x,
                       clip, rcp, div, R: tl.constexpr, BK: tl.constexpr, NCHUNK: tl.constexpr,
                       SYM: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, OFF: tl.constexpr,
                       ON_GPU: tl.constexpr):
    """Program ``i``: rows ``[i R, (i + 1) R)``; rows in ``[rows, rows_pad)`` get zero codes."""
    rr = tl.program_id(0) * R + tl.arange(0, R)
    live = rr < rows
    rows64 = rr.to(tl.int64)
    # pass 1: the range. Zero-filled padding changes neither max|x| nor the asymmetric range,
    # which is widened to contain 0 anyway; clip > 0 commutes with min/max and with |.|.
    v = _load_chunk(x_ptr, rows64, stride_x, live, 0, K, BK)
    lo = tl.minimum(tl.min(v, axis=1), 0.0)
    hi = tl.maximum(tl.max(v, axis=1), 0.0)
    for c in range(1, NCHUNK):
        vc = _load_chunk(x_ptr, rows64, stride_x, live, c * BK, K, BK)
        lo = tl.minimum(lo, tl.min(vc, axis=1))
        hi = tl.maximum(hi, tl.max(vc, axis=1))
    scale, zero = grid_params(lo, hi, clip, rcp, div, SYM, QMAX, ON_GPU)  # quantizer.params_from_range
    # pass 2: codes, shifted by OFF into int8, and their row sums (exact in int32)
    total = tl.zeros([R], tl.int32)
    pad = rr < rows_pad
    for c in range(0, NCHUNK):
        if NCHUNK > 1:  # one chunk: the tile of pass 1 is still in registers
            v = _load_chunk(x_ptr, rows64, stride_x, live, c * BK, K, BK)
        q = grid_codes(v, scale[:, None], zero[:, None], QMIN, QMAX, ON_GPU).to(tl.int32) - OFF
        q = tl.where(live[:, None], q, 0)
        cols = c * BK + tl.arange(0, BK)
        total += tl.sum(tl.where((cols < K)[None, :], q, 0), axis=1)
        tl.store(codes_ptr + rows64[:, None] * K + cols[None, :], q.to(tl.int8),
                 mask=pad[:, None] & (cols < K)[None, :])
    tl.store(scale_ptr + rr, scale, mask=live)
    tl.store(zero_ptr + rr, zero - OFF, mask=live)
    tl.store(sum_ptr + rr, total.to(tl.float32), mask=live)


def quantize_rows(x2: torch.Tensor, spec, rows_pad: int | None = None,
                  block_k: int | None = None) -> tuple[torch.Tensor, ...]:
    """Per-row dynamic quantization of ``x2`` ``[M, K]`` (float16/bfloat16/float32, last dim
    contiguous) on ``spec``'s integer grid, as the torch path of ``QuantLinear._forward_int8``.

    Returns ``(codes, scale, zero, xsum)``: int8 ``codes`` ``[rows_pad, K]`` (``rows_pad``
    defaults to ``M``; rows past ``M`` are zeros, the padding ``torch._int_mm`` needs for few
    rows), asymmetric codes and ``zero`` shifted by ``-2^(b-1)``; float32 ``scale``, ``zero`` and
    ``xsum`` (the sum of each row's codes) ``[M]``. ``block_k`` forces a chunk width (tests).
    """
    m, k = x2.shape
    rows_pad = m if rows_pad is None else rows_pad
    dev = x2.device
    codes = torch.empty(rows_pad, k, dtype=torch.int8, device=dev)
    scale, zero, xsum = (torch.empty(m, dtype=torch.float32, device=dev) for _ in range(3))
    if rows_pad == 0:
        return codes, scale, zero, xsum
    bk = block_k or (pow2_at_least(k, 16) if k <= MAX_TILE else CHUNK)
    r = max(1, TILE // bk)
    div, rcp = grid_divisor(spec)
    off = 0 if spec.symmetric else 2 ** (spec.bits - 1)
    with on_device(dev):
        _quant_rows_kernel[(ceil_div(rows_pad, r),)](
            x2, codes, scale, zero, xsum, m, rows_pad, k, x2.stride(0), float(spec.clip_ratio), rcp, div,
            r, bk, ceil_div(k, bk), spec.symmetric, spec.qmin, spec.qmax, off, not _INTERPRET,
            num_warps=4 if bk <= 4096 else 8, enable_fp_fusion=False)
    return codes, scale, zero, xsum


@triton.jit
def _epilogue_tile(acc, rm, rn, mm, mn, out_ptr, bias_ptr, sx_ptr, zx_ptr, xsum_ptr, sw_ptr, zw_ptr, qsum_ptr,
                   N, K, HAS_BIAS: tl.constexpr):
    """Store tile ``(rm, rn)`` of ``y = (acc - zw xsum - zx qsum + K zx zw) * sx * sw (+ bias)``
    from its float32 ``acc``."""
    sx = tl.load(sx_ptr + rm, mask=mm, other=1.0)[:, None]
    zx = tl.load(zx_ptr + rm, mask=mm, other=0.0)[:, None]
    xsum = tl.load(xsum_ptr + rm, mask=mm, other=0.0)[:, None]
    sw = tl.load(sw_ptr + rn, mask=mn, other=1.0)[None, :]
    zw = tl.load(zw_ptr + rn, mask=mn, other=0.0)[None, :]
    qsum = tl.load(qsum_ptr + rn, mask=mn, other=0.0)[None, :]
    # the torch epilogue's operations in its order, each rounded to float32 (no FMA)
    acc = acc - zw * xsum
    acc = acc - zx * qsum
    acc = acc + (K * zx) * zw
    y = ((acc * sx) * sw).to(out_ptr.dtype.element_ty)
    if HAS_BIAS:  # y + bias in the output dtype: exact in float32, then one rounding (as torch)
        b = tl.load(bias_ptr + rn, mask=mn, other=0.0).to(out_ptr.dtype.element_ty)
        y = (y.to(tl.float32) + b.to(tl.float32)[None, :]).to(out_ptr.dtype.element_ty)
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(out_ptr + offs, y, mask=mm[:, None] & mn[None, :])


@triton.jit(do_not_specialize=["M"])
def _epilogue_kernel(acc_ptr, out_ptr, bias_ptr, sx_ptr, zx_ptr, xsum_ptr, sw_ptr, zw_ptr, qsum_ptr,
                     M, N, K, BM: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Tile ``(i, j)`` of the epilogue from ``torch._int_mm``'s int32 ``acc``."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    mm, mn = rm < M, rn < N
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    acc = tl.load(acc_ptr + offs, mask=mm[:, None] & mn[None, :], other=0).to(tl.float32)
    _epilogue_tile(acc, rm, rn, mm, mn, out_ptr, bias_ptr, sx_ptr, zx_ptr, xsum_ptr, sw_ptr, zw_ptr, qsum_ptr,
                   N, K, HAS_BIAS)


@triton.autotune(
    configs=[triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=st)
             for bm, bn, bk, w, st in ((128, 256, 128, 8, 3), (128, 256, 128, 8, 4), (256, 128, 128, 8, 3),
                                       (128, 256, 64, 8, 4), (128, 128, 128, 8, 4), (128, 128, 128, 4, 3),
                                       (128, 128, 64, 4, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 5),
                                       (32, 64, 128, 4, 5), (16, 64, 256, 4, 4), (16, 128, 128, 4, 4),
                                       (16, 128, 256, 4, 3), (16, 256, 128, 8, 3),
                                       # K tiles of 256 bytes (an fp16 GEMM's 128 columns) and deeper pipelines
                                       (256, 128, 128, 8, 4), (128, 128, 256, 8, 3), (128, 256, 256, 8, 2),
                                       (256, 128, 256, 8, 2))],
    key=["M_BUCKET", "N", "K"],
)
@triton.jit(do_not_specialize=["M"])
def _int8_gemm_kernel(a_ptr, w_ptr, out_ptr, bias_ptr, sx_ptr, zx_ptr, xsum_ptr, sw_ptr, zw_ptr, qsum_ptr,
                      M, N, K: tl.constexpr, stride_a, M_BUCKET, HAS_BIAS: tl.constexpr, BM: tl.constexpr,
                      BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """``acc = codes @ w^T`` exactly in int32 (int8 tensor cores), then the same epilogue: the
    ``torch._int_mm`` result without its int32 round trip through memory."""
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    in_group = GROUP_M * num_n  # programs of GROUP_M row tiles walk the column tiles together (L2 reuse)
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mm, mn = rm < M, rn < N
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    a_ptrs = a_ptr + rm.to(tl.int64)[:, None] * stride_a + rk[None, :]
    b_ptrs = w_ptr + rn.to(tl.int64)[None, :] * K + rk[:, None]
    for k0 in range(0, K, BK):  # K is a compile-time constant: static bounds
        if K % BK == 0:  # no column mask: full tiles
            a = tl.load(a_ptrs + k0, mask=mm[:, None], other=0)
            b = tl.load(b_ptrs + k0, mask=mn[None, :], other=0)
        else:
            km = (k0 + rk) < K
            a = tl.load(a_ptrs + k0, mask=mm[:, None] & km[None, :], other=0)
            b = tl.load(b_ptrs + k0, mask=mn[None, :] & km[:, None], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    _epilogue_tile(acc.to(tl.float32), rm, rn, mm, mn, out_ptr, bias_ptr, sx_ptr, zx_ptr, xsum_ptr, sw_ptr,
                   zw_ptr, qsum_ptr, N, K, HAS_BIAS)


def int8_epilogue(acc: torch.Tensor, sx: torch.Tensor, zx: torch.Tensor, xsum: torch.Tensor,
                  sw: torch.Tensor, zw: torch.Tensor, qsum: torch.Tensor, k: int, dtype: torch.dtype,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``[M, N]`` output in ``dtype`` from the int32 products ``acc`` of ``k``-long dot products
    (its first ``M`` rows, ``M = sx.numel()``; contiguous ``[>= M, N]``), the float32 per-row
    ``sx``/``zx``/``xsum`` ``[M]`` and per-column ``sw``/``zw``/``qsum`` ``[N]``, + ``bias``."""
    m, n = sx.numel(), acc.shape[1]
    out = torch.empty(m, n, dtype=dtype, device=acc.device)
    if m == 0 or n == 0:
        return out
    grid = (ceil_div(m, BLOCK_M), ceil_div(n, BLOCK_N))
    with on_device(acc.device):
        _epilogue_kernel[grid](acc, out, out if bias is None else bias, sx, zx, xsum, sw, zw, qsum, m, n, k,
                               BLOCK_M, BLOCK_N, bias is not None, num_warps=4, enable_fp_fusion=False)
    return out


def int8_quantize(x2: torch.Tensor, spec) -> tuple[torch.Tensor, ...]:
    """:func:`quantize_rows` of ``x2`` as :func:`int8_linear` needs it (padded to the 32 rows
    ``torch._int_mm`` needs on CUDA for few rows), to share among linears of one input."""
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    return quantize_rows(x2, spec, rows_pad=32 if m <= 16 and INT8_GEMM != "triton" else m)


def int8_linear(x2: torch.Tensor, w: torch.Tensor, sw: torch.Tensor, zw: torch.Tensor, qsum: torch.Tensor,
                spec, bias: torch.Tensor | None = None, quantized: tuple | None = None) -> torch.Tensor:
    """``x2 @ W^T (+ bias)`` for CUDA ``x2`` ``[M, K]``, ``W = (w - zw) * sw`` given by int8 codes
    ``w`` ``[N, K]`` and float32 ``sw``/``zw``/``qsum = w.sum(1)`` ``[N]``, the activations
    quantized per row on ``spec``'s grid (or ``quantized``: :func:`int8_quantize` of ``x2`` done
    before); returns ``[M, N]`` in ``x2``'s dtype."""
    m, k = x2.shape
    codes, sx, zx, xsum = quantized if quantized is not None else int8_quantize(x2, spec)
    if INT8_GEMM == "triton":
        return _fused_gemm(codes, sx, zx, xsum, m, w, sw, zw, qsum, x2.dtype, bias)
    if m <= 16 and codes.shape[0] < 32:  # torch._int_mm on CUDA needs more than 16 rows
        codes = torch.nn.functional.pad(codes, (0, 0, 0, 32 - codes.shape[0]))
    acc = torch._int_mm(codes, w.t())
    return int8_epilogue(acc, sx, zx, xsum, sw, zw, qsum, k, x2.dtype, bias)


def _fused_gemm(codes, sx, zx, xsum, m, w, sw, zw, qsum, dtype, bias) -> torch.Tensor:
    """The GEMM and the epilogue in one Triton kernel (int8 tensor cores, int32 accumulation, so
    the same values as ``torch._int_mm`` + :func:`int8_epilogue`): no int32 ``[M, N]`` round trip
    through memory and no padding of small ``M``. Used when ``INT8_GEMM = "triton"``."""
    n, k = w.shape
    out = torch.empty(m, n, dtype=dtype, device=codes.device)
    if m == 0 or n == 0:
        return out
    grid = lambda meta: (ceil_div(m, meta["BM"]) * ceil_div(n, meta["BN"]),)  # noqa: E731
    with on_device(codes.device):
        _int8_gemm_kernel[grid](codes, w, out, out if bias is None else bias, sx, zx, xsum, sw, zw, qsum, m, n, k,
                                codes.stride(0), min(pow2_at_least(m), 256), bias is not None,
                                enable_fp_fusion=False)
    return out

"""Triton W4A16 matmul for few rows (decode): int4 codes, float32 group scales, fp16/bf16 in and out;
and a one-pass dequantization kernel for many rows (prefill: dequantize, then a cuBLAS matmul).

Decode at batch 1..16 reads every weight once per token, so it is bound by memory bandwidth, and
by kernel launches for small layers. torch's int4 kernel (``aten._weight_int4pack_mm``,
tinygemm) takes bfloat16 only, so an fp16 model pays two casts per linear around it; this kernel
reads the activations in their own dtype, unpacks two nibbles per byte, dequantizes a tile of
weights in registers exactly as :meth:`~rotaquant.quant.qlinear.QuantLinear.dequantize` does
(``(u - z) * s`` in float32, rounded to the activation dtype) and multiplies it with ``tl.dot``
(float32 accumulation), so it equals the reference path up to accumulation order.

Layout (built by :func:`pack_w4`): ``packed`` uint8 ``[N, K/2]`` with element ``2j`` in the low
nibble and ``2j+1`` in the high one, unsigned (``u = code + 8``); ``scale`` and ``zp`` float32
``[N, G]`` with ``zp = zero + 8``, so ``w = (u - zp) * scale``.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the kernel is simply unavailable
    triton = None

BLOCK_M = 16  # tl.dot needs 16 rows; decode batches up to 16 fill one tile


def available(device: torch.device) -> bool:
    """Whether the kernel can run on ``device`` (CUDA with Triton installed)."""
    return triton is not None and device.type == "cuda"


def pack_w4(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> dict:
    """Kernel operands from signed 4-bit ``codes`` ``[N, K]`` (int8, ``-8..7``) and float32
    ``scale``/``zero`` ``[N, G]`` (``w = (codes - zero) * scale``)."""
    u = (codes.to(torch.int16) + 8).to(torch.uint8)
    packed = (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()
    return {"packed": packed, "scale": scale.to(torch.float32).contiguous(),
            "zp": (zero.to(torch.float32) + 8).contiguous()}


K_TILES = (512, 256, 128, 64)


def block_k_for(k: int, group: int | None) -> int | None:
    """The K tile: the largest of :data:`K_TILES` that divides ``k`` and is a multiple of ``group``."""
    for bk in K_TILES:
        if k % bk == 0 and (group is None or (bk % group == 0 and group <= bk)):
            return bk
    return None


if triton is not None:

    @triton.autotune(
        configs=[triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
                 for bn, w, s in ((16, 4, 4), (32, 4, 4), (16, 2, 5), (64, 4, 3), (16, 4, 6), (32, 8, 4),
                                  (128, 4, 3))],
        key=["N", "K", "M_BUCKET"],
    )
    @triton.jit
    def _w4a16_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, M, N, K, n_groups, stride_xm, stride_ym, M_BUCKET,
                      G: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK_K: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        offs_kh = tl.arange(0, BLOCK_K // 2)
        m_ok = offs_m[:, None] < M
        n_ok = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if PER_CHANNEL:
            s_row = tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)
            z_row = tl.load(z_ptr + offs_n, mask=n_ok, other=0.0)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=m_ok, other=0.0)
            b = tl.load(w_ptr + offs_n[:, None] * (K // 2) + (k0 // 2 + offs_kh)[None, :], mask=n_ok[:, None],
                        other=0)
            u = tl.interleave((b & 0xF).to(tl.float32), (b >> 4).to(tl.float32))  # [BLOCK_N, BLOCK_K]
            if PER_CHANNEL:
                w = (u - z_row[:, None]) * s_row[:, None]
            else:
                GB: tl.constexpr = BLOCK_K // G
                offs_g = k0 // G + tl.arange(0, GB)
                sz_off = offs_n[:, None] * n_groups + offs_g[None, :]
                s = tl.load(s_ptr + sz_off, mask=n_ok[:, None], other=0.0)
                z = tl.load(z_ptr + sz_off, mask=n_ok[:, None], other=0.0)
                w = tl.reshape((tl.reshape(u, (BLOCK_N, GB, G)) - z[:, :, None]) * s[:, :, None],
                               (BLOCK_N, BLOCK_K))
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        y = acc.to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y, mask=m_ok & n_ok[None, :])


if triton is not None:

    @triton.jit
    def _dequant_tile(w_ptr, s_ptr, z_ptr, offs_n, n_ok, k0, K, n_groups, G: tl.constexpr,
                      PER_CHANNEL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Columns ``[k0, k0 + BLOCK_K)`` of rows ``offs_n`` of ``W = (u - zp) * scale`` (float32)."""
        offs_kh = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        b = tl.load(w_ptr + offs_n[:, None] * (K // 2) + offs_kh[None, :], mask=n_ok[:, None], other=0)
        u = tl.interleave((b & 0xF).to(tl.float32), (b >> 4).to(tl.float32))  # [BLOCK_N, BLOCK_K]
        if PER_CHANNEL:
            s = tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)[:, None]
            z = tl.load(z_ptr + offs_n, mask=n_ok, other=0.0)[:, None]
            w = (u - z) * s
        else:
            GB: tl.constexpr = BLOCK_K // G
            sz_off = offs_n[:, None] * n_groups + (k0 // G + tl.arange(0, GB))[None, :]
            s = tl.load(s_ptr + sz_off, mask=n_ok[:, None], other=0.0)
            z = tl.load(z_ptr + sz_off, mask=n_ok[:, None], other=0.0)
            w = tl.reshape((tl.reshape(u, (BLOCK_N, GB, G)) - z[:, :, None]) * s[:, :, None], (BLOCK_N, BLOCK_K))
        return w

    @triton.jit
    def _w4_dequant_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, K, n_groups, G: tl.constexpr,
                           PER_CHANNEL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # one [BLOCK_N, BLOCK_K] tile of W, float32 math rounded once to out's dtype
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k0 = tl.program_id(1) * BLOCK_K
        n_ok = offs_n < N
        w = _dequant_tile(w_ptr, s_ptr, z_ptr, offs_n, n_ok, k0, K, n_groups, G, PER_CHANNEL, BLOCK_N, BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        tl.store(out_ptr + offs_n[:, None] * K + offs_k[None, :], w.to(out_ptr.dtype.element_ty),
                 mask=n_ok[:, None])


def w4_dequantize(ops: dict, group: int | None, dtype: torch.dtype) -> torch.Tensor:
    """``W`` ``[N, K]`` in ``dtype`` from the :func:`pack_w4` operands, equal to
    :meth:`~rotaquant.quant.qlinear.QuantLinear.dequantize` (``(codes - zero) * scale`` in float32,
    rounded to ``dtype``) bit for bit: one read of the packed codes, one write of ``W``."""
    packed = ops["packed"]
    n, k = packed.shape[0], packed.shape[1] * 2
    bk = block_k_for(k, group)
    out = torch.empty(n, k, dtype=dtype, device=packed.device)
    per_channel = group is None
    grid = (triton.cdiv(n, 32), k // bk)
    _w4_dequant_kernel[grid](packed, ops["scale"], ops["zp"], out, n, k, ops["scale"].shape[1],
                             G=bk if per_channel else group, PER_CHANNEL=per_channel, BLOCK_N=32, BLOCK_K=bk,
                             num_warps=4)
    return out


def w4a16_matmul(x2: torch.Tensor, ops: dict, group: int | None) -> torch.Tensor:
    """``x2 @ W^T`` for ``x2`` ``[M, K]`` (fp16/bf16, CUDA) and the :func:`pack_w4` operands ``ops``
    of ``W`` ``[N, K]`` with groups of ``group`` (None: one scale per output channel)."""
    m, k = x2.shape
    n = ops["packed"].shape[0]
    bk = block_k_for(k, group)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    y = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    per_channel = group is None
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, BLOCK_M))  # noqa: E731
    _w4a16_kernel[grid](x2, ops["packed"], ops["scale"], ops["zp"], y, m, n, k, ops["scale"].shape[1],
                        x2.stride(0), y.stride(0), min(triton.next_power_of_2(m), 64),
                        G=bk if per_channel else group, PER_CHANNEL=per_channel, BLOCK_K=bk, BLOCK_M=BLOCK_M)
    return y

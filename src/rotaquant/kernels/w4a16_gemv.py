"""Triton W4A16 kernels: a split-K matmul for few rows (decode) and a one-pass dequantization for
many rows (prefill: dequantize, then a cuBLAS matmul). int4 codes, float32 group scales,
fp16/bf16 activations in and out.

Decode at batch 1..16 reads every weight once per token: it is bound by memory bandwidth, and by
the instructions that turn nibbles into floats. Integer-to-float conversions run at a quarter of
the FMA rate, so the kernel never converts: a nibble ``u`` OR-ed into the bits of ``2^23`` is the
float32 ``2^23 + u``, and subtracting the stored ``2^23 + zp`` leaves ``u - zp`` exactly; times
the float32 scale and rounded to the activation dtype, that is
:meth:`~rotaquant.quant.qlinear.QuantLinear.dequantize` bit for bit, so the result equals the
reference path up to accumulation order.

The ``tc`` mode goes further: the nibbles become the 16-bit floats ``M16 + u`` (one LOP3 per two,
in inline PTX) that feed tensor-core dots directly, and each block's zero point and scale are
applied to the dot's ``[rows, BLOCK_N]`` result instead of to every weight (the sums of ``x`` the
zero point needs come from a second dot, on a tile of ones); with symmetric codes a packed FMA
per two codes subtracts ``M16 + 8`` first and no zero-point term is left. Compiled for sm_90, its
main loop is 255 (symmetric) / 276 (asymmetric) SASS instructions per 64 weights a thread against
the ``fast`` mode's 475 (not yet timed).

Layout (built by :func:`pack_w4`; ``H`` = :func:`half_for`, half a group, or a K tile for per-
channel scales): the input dim is cut into blocks of ``2H``; byte ``j`` of a block holds element
``j`` in its low nibble and element ``H + j`` in its high nibble (unsigned, ``u = code + 8``), so a
block unpacks into two contiguous halves with no shuffle, both under one group scale. Scales and
``2^23 + zp`` (``zp = zero + 8``) are float32 ``[G, N]`` (transposed: a block's scales for a tile
of rows are contiguous).

Split K: a layer of 4096 outputs in tiles of 16-64 rows gives too few programs to keep every SM's
memory pipe full, so each tile's K range is split among ``SPLIT_K`` programs; each writes a float32
partial sum, and the last to finish (an atomic counter per tile, reset by that program) adds the
partials in split order (deterministic) and writes the output: one launch per linear, no zeroing.
"""

from __future__ import annotations

import os

import torch

from . import ceil_div, pow2_at_least

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the kernel is simply unavailable
    triton = None

BLOCK_M = 16  # tl.dot needs 16 rows; decode batches up to 16 fill one tile
MAX_SPLIT = 32  # the widest split of the autotuned configs (sizes the partial-sum workspace)
MIN_TILE_N = 16  # the narrowest row tile of the configs (sizes the tile counters)
HALVES = (128, 64, 32, 16)  # block halves for per-channel scales (the largest with 2H | K)
# "dot": tensor cores (tl.dot on the dequantized tile in the activation dtype), any rows;
# "fma": one row at a time on the FMA units (the same rounded weights, float32 products);
# "fast": one row on the FMA units with the float32 weights not rounded to the activation dtype
# (the exact dequantized values: differs from the reference by that rounding, ~1e-4 relative);
# "tc": tensor cores on the codes themselves, any rows: each block's dot of the activations with
# the exact 16-bit floats M16 + u (u the unsigned code; M16 = 1024 for float16, 128 for bfloat16,
# whose bits are 0x6400 / 0x4300 OR u: no conversion), then the block's zero point and scale
# applied to the [rows, BLOCK_N] result, (dot - sum(x) (zp + M16)) * s: a nibble costs a mask, an
# OR and its share of the dot instead of the per-weight subtract, multiply and FMA of "fast"
# (the exact dequantized values again, float32 sums: ~1e-4 relative from the reference);
# chosen by benchmarks/export_bench.py --parts linears: "tc" (H200, stop 23: a LLaMA-7B layer's
# seven linears at one row 87.2 us vs dot 114.3, fast 104.0, FP16 cuBLAS 128.4)
DECODE_MODE = "tc"
_MODES = {"dot": 0, "fma": 1, "fast": 2, "tc": 3}
_ONE_ROW = (1, 2)  # the modes that compute one row at a time (others: tiles of BLOCK_M rows)
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAGIC = 8388608.0  # 2^23: float32 whose last mantissa bits hold an integer 0..2^23-1 exactly


def available(device: torch.device) -> bool:
    """Whether the kernels can run on ``device`` (CUDA with Triton installed)."""
    return triton is not None and device.type == "cuda"


def half_for(k: int, group: int | None) -> int | None:
    """``H``: half a group (a power of two >= 16), or for per-channel scales (``group`` None) the
    largest of :data:`HALVES` with ``2H`` dividing ``k``; None when the layout cannot hold ``k``."""
    if group is None:
        return next((h for h in HALVES if k % (2 * h) == 0), None)
    h = group // 2
    if group % 2 or h < 16 or h & (h - 1) or k % group:
        return None
    return h


def pack_w4(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int | None) -> dict:
    """Kernel operands from signed 4-bit ``codes`` ``[N, K]`` (int8, ``-8..7``) and float32
    ``scale``/``zero`` ``[N, G]`` (``w = (codes - zero) * scale``) in groups of ``group`` (None:
    per channel). Raises ValueError when :func:`half_for` has no layout for it."""
    n, k = codes.shape
    h = half_for(k, group)
    if h is None:
        raise ValueError(f"no W4 layout for input size {k} in groups of {group}")
    u = (codes.to(torch.int16) + 8).to(torch.uint8).reshape(n, k // (2 * h), 2, h)
    packed = (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(n, k // 2).contiguous()
    zc = zero.to(torch.float32) + (8 + MAGIC)  # exact: |zero + 8| < 2^8
    dev = codes.device
    return {"packed": packed, "half": h, "scale_t": scale.to(torch.float32).t().contiguous(),
            "zc_t": zc.t().contiguous(), "zp8": bool((zero == 0).all()),  # symmetric codes: every zero point 8
            # one counter per output tile of the narrowest tiling (one tile of rows; w4a16_matmul adds
            # room for more rows); the program that finishes a tile resets its counter
            "counters": torch.zeros(-(-n // MIN_TILE_N), dtype=torch.int32, device=dev)}


# Bytes b0..b3 of $4 (each two codes: element j low, H + j high) to eight 16-bit floats M16 + u:
# $0 = (b0, b1) and $1 = (b2, b3) low nibbles, $2 / $3 the high ones, as float16/bfloat16 pairs
# ({magic} = the bits of M16). prmt spreads two bytes into the two halves of a word, lop3
# computes (t & 0x000F000F) | magic (LUT 0xEA = (a & b) | c).
_UNPACK_ASM = """{{
.reg .b32 t0, t1;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
lop3.b32 $0, t0, 0x000F000F, {magic:#x}, 0xEA;
lop3.b32 $1, t1, 0x000F000F, {magic:#x}, 0xEA;
shr.u32 t0, t0, 4;
shr.u32 t1, t1, 4;
lop3.b32 $2, t0, 0x000F000F, {magic:#x}, 0xEA;
lop3.b32 $3, t1, 0x000F000F, {magic:#x}, 0xEA;
}}"""

# The same for symmetric codes (every zero point 8): each pair then minus (M16 + 8) in one packed
# FMA, giving u - 8 = the signed code exactly ({one} / {neg}: the pairs 1.0 and -(M16 + 8)).
_UNPACK_SYM_ASM = """{{
.reg .b32 t0, t1, one, neg;
mov.b32 one, {one:#x};
mov.b32 neg, {neg:#x};
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
lop3.b32 $0, t0, 0x000F000F, {magic:#x}, 0xEA;
lop3.b32 $1, t1, 0x000F000F, {magic:#x}, 0xEA;
fma.rn.{kind}x2 $0, $0, one, neg;
fma.rn.{kind}x2 $1, $1, one, neg;
shr.u32 t0, t0, 4;
shr.u32 t1, t1, 4;
lop3.b32 $2, t0, 0x000F000F, {magic:#x}, 0xEA;
lop3.b32 $3, t1, 0x000F000F, {magic:#x}, 0xEA;
fma.rn.{kind}x2 $2, $2, one, neg;
fma.rn.{kind}x2 $3, $3, one, neg;
}}"""

if triton is not None:
    _MAGIC = tl.constexpr(MAGIC)  # a global a jitted function may read
    _ASM = tl.constexpr(not _INTERPRET)  # inline PTX (the "tc" mode's unpacking) on the GPU only
    _UNPACK_FP16 = tl.constexpr(_UNPACK_ASM.format(magic=0x64006400))  # M16 = 1024.0
    _UNPACK_BF16 = tl.constexpr(_UNPACK_ASM.format(magic=0x43004300))  # M16 = 128.0
    # -1032.0 = 0xE408 (float16), -136.0 = 0xC308 (bfloat16)
    _UNPACK_SYM_FP16 = tl.constexpr(_UNPACK_SYM_ASM.format(magic=0x64006400, one=0x3C003C00, neg=0xE408E408, kind="f16"))
    _UNPACK_SYM_BF16 = tl.constexpr(_UNPACK_SYM_ASM.format(magic=0x43004300, one=0x3F803F80, neg=0xC308C308,
                                                           kind="bf16"))

    @triton.jit
    def _halves(w_ptr, s_ptr, z_ptr, offs_n, n_ok, blk, N, K: tl.constexpr, H: tl.constexpr,
                PER_CHANNEL: tl.constexpr, s_pc, z_pc, live):
        """The two dequantized halves (float32 ``[BLOCK_N, H]``) of block ``blk`` of rows ``offs_n``."""
        offs_h = tl.arange(0, H)
        ok = n_ok[:, None] & live
        b = tl.load(w_ptr + offs_n.to(tl.int64)[:, None] * (K // 2) + blk * H + offs_h[None, :], mask=ok, other=0)
        b = b.to(tl.int32)
        lo = ((b & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)  # 2^23 + u, no conversion
        hi = ((b >> 4) | 0x4B000000).to(tl.float32, bitcast=True)
        if PER_CHANNEL:
            s, z = s_pc, z_pc
        else:
            s = tl.load(s_ptr + blk * N + offs_n, mask=n_ok & live, other=0.0)
            z = tl.load(z_ptr + blk * N + offs_n, mask=n_ok & live, other=_MAGIC)
        return (lo - z[:, None]) * s[:, None], (hi - z[:, None]) * s[:, None]

    @triton.jit
    def _codes16(w_ptr, s_ptr, z_ptr, offs_n, n_ok, blk, N, K: tl.constexpr, H: tl.constexpr,
                 PER_CHANNEL: tl.constexpr, s_pc, z_pc, live, DT: tl.constexpr, ZP8: tl.constexpr):
        """Block ``blk`` of rows ``offs_n`` as the two halves of ``M16 + u`` in ``DT`` (float16 or
        bfloat16, exact: the bits of M16 OR-ed with the nibble) ``[BLOCK_N, H]``, or with ``ZP8``
        (every zero point 8: symmetric codes) of ``u - 8``, the signed codes; the block's scales
        ``s`` and ``zp + M16`` (float32 ``[BLOCK_N]``; rows and blocks outside: scale 0)."""
        offs_h = tl.arange(0, H)
        ok = n_ok[:, None] & live
        b = tl.load(w_ptr + offs_n.to(tl.int64)[:, None] * (K // 2) + blk * H + offs_h[None, :], mask=ok, other=0)
        if DT == tl.bfloat16:
            dt = tl.bfloat16
            bits: tl.constexpr = 0x4300  # 128.0
            m16: tl.constexpr = 128.0
            asm: tl.constexpr = _UNPACK_SYM_BF16 if ZP8 else _UNPACK_BF16
        else:
            dt = tl.float16
            bits: tl.constexpr = 0x6400  # 1024.0
            m16: tl.constexpr = 1024.0
            asm: tl.constexpr = _UNPACK_SYM_FP16 if ZP8 else _UNPACK_FP16
        if _ASM:  # four bytes a call: two byte permutes, two shifts, four LOP3s make eight codes
            lo, hi = tl.inline_asm_elementwise(asm, "=r,=r,=r,=r,r", [b], dtype=(dt, dt), is_pure=True, pack=4)
        else:  # Triton's interpreter has no inline PTX: the same bits by 16-bit integer operations
            lo = ((b & 0xF).to(tl.int16) | bits).to(dt, bitcast=True)
            hi = ((b >> 4).to(tl.int16) | bits).to(dt, bitcast=True)
            if ZP8:
                lo, hi = (lo - (m16 + 8.0)).to(dt), (hi - (m16 + 8.0)).to(dt)  # exact: small integers
        if PER_CHANNEL:
            s, z = s_pc, z_pc
        else:
            s = tl.load(s_ptr + blk * N + offs_n, mask=n_ok & live, other=0.0)
            z = tl.load(z_ptr + blk * N + offs_n, mask=n_ok & live, other=_MAGIC)
        return lo, hi, s, (z - _MAGIC) + m16  # z holds 2^23 + zp: both steps exact

    @triton.jit
    def _w4_mm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, part_ptr, cnt_ptr, M, N, stride_xm, stride_ym, M_BUCKET,
                      K: tl.constexpr, H: tl.constexpr, PER_CHANNEL: tl.constexpr, MODE: tl.constexpr,
                      BM: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, UNROLL: tl.constexpr,
                      ZP8: tl.constexpr = False):
        """Program ``(n, s, m)``: rows ``m`` (``BM`` of them) x outputs ``n`` over split ``s`` of K."""
        pid_n, pid_s, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_h = tl.arange(0, H)
        m_ok, n_ok = offs_m < M, offs_n < N
        NB: tl.constexpr = K // (2 * H)
        STEPS: tl.constexpr = (NB + SPLIT_K * UNROLL - 1) // (SPLIT_K * UNROLL)
        s_pc = tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)  # per-channel scales (unused otherwise)
        z_pc = tl.load(z_ptr + offs_n, mask=n_ok, other=_MAGIC)
        if MODE == 0 or MODE == 3:
            acc = tl.zeros((BM, BLOCK_N), dtype=tl.float32)
            if MODE == 3 and not ZP8:
                ones = tl.full((H, BLOCK_N), 1.0, x_ptr.dtype.element_ty)
        else:
            acc2 = tl.zeros((BLOCK_N, H), dtype=tl.float32)
        x_row = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
        for step in range(STEPS):
            for u in tl.static_range(UNROLL):
                blk = (pid_s * STEPS + step) * UNROLL + u
                live = blk < NB
                xm = m_ok[:, None] & live
                x_lo = tl.load(x_row + blk * (2 * H) + offs_h[None, :], mask=xm, other=0.0)
                x_hi = tl.load(x_row + blk * (2 * H) + H + offs_h[None, :], mask=xm, other=0.0)
                if MODE == 3:
                    c_lo, c_hi, s_b, zq = _codes16(w_ptr, s_ptr, z_ptr, offs_n, n_ok, blk, N, K, H, PER_CHANNEL,
                                                   s_pc, z_pc, live, x_lo.dtype, ZP8)
                    d = tl.dot(x_lo, tl.trans(c_lo), tl.zeros((BM, BLOCK_N), dtype=tl.float32))
                    d = tl.dot(x_hi, tl.trans(c_hi), d)  # products exact
                    if ZP8:  # d = sum x (u - 8)
                        acc += d * s_b[None, :]
                    else:  # d = sum x (M16 + u); the sums of x from the tensor cores too, on a tile of ones
                        xs = tl.dot(x_lo, ones, tl.zeros((BM, BLOCK_N), dtype=tl.float32))
                        xs = tl.dot(x_hi, ones, xs)
                        acc += (d - xs * zq[None, :]) * s_b[None, :]
                else:
                    w_lo, w_hi = _halves(w_ptr, s_ptr, z_ptr, offs_n, n_ok, blk, N, K, H, PER_CHANNEL, s_pc, z_pc,
                                         live)
                if MODE == 0:
                    acc = tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)), acc)
                    acc = tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)), acc)
                elif MODE == 1:  # BM == 1: products of the rounded weights in float32 (exact), summed at the end
                    acc2 += w_lo.to(x_lo.dtype).to(tl.float32) * x_lo.to(tl.float32)
                    acc2 += w_hi.to(x_hi.dtype).to(tl.float32) * x_hi.to(tl.float32)
                elif MODE == 2:  # BM == 1, the float32 weights unrounded: no conversion per weight at all
                    acc2 += w_lo * x_lo.to(tl.float32)
                    acc2 += w_hi * x_hi.to(tl.float32)
        if MODE == 1 or MODE == 2:
            acc = tl.sum(acc2, axis=1)[None, :]
        out_ok = m_ok[:, None] & n_ok[None, :]
        y_offs = offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=out_ok)
        else:
            # partials [SPLIT_K, M, N]; the last program of this tile adds them in split order
            p_offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
            tl.store(part_ptr + pid_s * M * N + p_offs, acc, mask=out_ok)
            tl.debug_barrier()  # every thread's partial is stored before the counter moves
            tile = pid_m * tl.num_programs(0) + pid_n
            done = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")  # orders the store above before it
            if done == SPLIT_K - 1:
                total = tl.load(part_ptr + p_offs, mask=out_ok, other=0.0, cache_modifier=".cg")
                for s in tl.static_range(1, SPLIT_K):
                    total += tl.load(part_ptr + s * M * N + p_offs, mask=out_ok, other=0.0, cache_modifier=".cg")
                tl.store(y_ptr + y_offs, total.to(y_ptr.dtype.element_ty), mask=out_ok)
                tl.atomic_xchg(cnt_ptr + tile, 0)  # ready for the next call (and a CUDA graph replay)

    # narrow tiles for the tensor-core path; wide tiles (several rows per thread reuse each loaded
    # activation) with deeper splits for the one-row FMA paths
    _CONFIGS = [triton.Config({"BLOCK_N": bn, "SPLIT_K": sk, "UNROLL": un}, num_warps=w, num_stages=st)
                for bn, sk, un, w, st in ((16, 4, 1, 4, 4), (16, 8, 1, 4, 4), (32, 4, 1, 4, 4), (32, 8, 1, 4, 3),
                                          (64, 4, 1, 8, 3), (16, 4, 2, 2, 4), (32, 4, 2, 8, 3), (64, 2, 1, 4, 4),
                                          (64, 8, 1, 4, 3), (64, 16, 1, 4, 3), (128, 8, 1, 4, 3), (64, 8, 2, 4, 3),
                                          (128, 8, 2, 4, 2),  # fast-mode tiles: the best of w4_decode_sweep's
                                          # more programs in flight: ncu (stop 21) saw the 4096x4096 decode
                                          # latency-bound at 0.78 waves and 20 % occupancy with (64, 8, 2, 4)
                                          (32, 16, 1, 4, 3), (64, 32, 1, 4, 3), (128, 16, 1, 4, 3),
                                          (128, 32, 1, 8, 2),
                                          (128, 4, 1, 4, 3))]  # tc mode's best for 11008 x 4096 (stop 23)
    # K in the key: 4096 x 4096 and 4096 x 11008 (one N) want different tiles
    _w4_mm_tuned = triton.autotune(configs=_CONFIGS, key=["N", "K", "M_BUCKET", "MODE"])(_w4_mm_kernel)

    @triton.jit
    def _w4_dequant_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, K: tl.constexpr, H: tl.constexpr,
                           PER_CHANNEL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCKS: tl.constexpr):
        """Rows ``[n, n + BLOCK_N)`` x blocks ``[b * BLOCKS, (b + 1) * BLOCKS)`` of ``W``, float32 math
        rounded once to out's dtype."""
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        offs_h = tl.arange(0, H)
        NB: tl.constexpr = K // (2 * H)
        s_pc = tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)
        z_pc = tl.load(z_ptr + offs_n, mask=n_ok, other=_MAGIC)
        row = out_ptr + offs_n.to(tl.int64)[:, None] * K
        for i in tl.static_range(BLOCKS):
            blk = tl.program_id(1) * BLOCKS + i
            live = blk < NB
            w_lo, w_hi = _halves(w_ptr, s_ptr, z_ptr, offs_n, n_ok, blk, N, K, H, PER_CHANNEL, s_pc, z_pc, live)
            ok = n_ok[:, None] & live
            tl.store(row + blk * (2 * H) + offs_h[None, :], w_lo.to(out_ptr.dtype.element_ty), mask=ok)
            tl.store(row + blk * (2 * H) + H + offs_h[None, :], w_hi.to(out_ptr.dtype.element_ty), mask=ok)


def _dims(ops: dict) -> tuple[int, int, int, bool]:
    n, k = ops["packed"].shape[0], ops["packed"].shape[1] * 2
    return n, k, ops["half"], ops["scale_t"].shape[0] == 1  # one scale per row: per channel


def w4_dequantize(ops: dict, dtype: torch.dtype) -> torch.Tensor:
    """``W`` ``[N, K]`` in ``dtype`` from the :func:`pack_w4` operands, equal to
    :meth:`~rotaquant.quant.qlinear.QuantLinear.dequantize` (``(codes - zero) * scale`` in float32,
    rounded to ``dtype``) bit for bit: one read of the packed codes, one write of ``W``."""
    n, k, h, per_channel = _dims(ops)
    out = torch.empty(n, k, dtype=dtype, device=ops["packed"].device)
    blocks = max(1, 256 // (2 * h))
    grid = (ceil_div(n, 32), ceil_div(k // (2 * h), blocks))
    _w4_dequant_kernel[grid](ops["packed"], ops["scale_t"], ops["zc_t"], out, n, k, h, per_channel,
                             BLOCK_N=32, BLOCKS=blocks, num_warps=4)
    return out


def w4a16_matmul(x2: torch.Tensor, ops: dict, mode: str | None = None, config: dict | None = None) -> torch.Tensor:
    """``x2 @ W^T`` for ``x2`` ``[M, K]`` (fp16/bf16, CUDA; few rows) and the :func:`pack_w4`
    operands ``ops`` of ``W`` ``[N, K]``. ``mode``: ``dot``, ``tc``, or ``fma`` / ``fast`` (one
    row only; ``dot`` for more), default :data:`DECODE_MODE`. ``config``: a fixed tile (keys ``BLOCK_N``,
    ``SPLIT_K``, ``UNROLL``, ``num_warps``) instead of the autotuned one (tests, the interpreter)."""
    m, k = x2.shape
    n, _, h, per_channel = _dims(ops)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    y = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    if m == 0:
        return y
    code = _MODES[mode or DECODE_MODE]
    if m > 1 and code in _ONE_ROW:
        code = 0
    bm = 1 if code in _ONE_ROW else BLOCK_M
    parts = torch.empty(MAX_SPLIT, m, n, dtype=torch.float32, device=x2.device)
    m_tiles = ceil_div(m, bm)
    if m_tiles * ceil_div(n, MIN_TILE_N) > ops["counters"].numel():
        ops["counters"] = torch.zeros(m_tiles * ceil_div(n, MIN_TILE_N), dtype=torch.int32, device=x2.device)
    args = (x2, ops["packed"], ops["scale_t"], ops["zc_t"], y, parts, ops["counters"], m, n, x2.stride(0),
            y.stride(0), min(pow2_at_least(m), 64))
    consts = {"K": k, "H": h, "PER_CHANNEL": per_channel, "MODE": code, "BM": bm, "ZP8": bool(ops.get("zp8"))}
    if config is None and not _INTERPRET:
        grid = lambda meta: (ceil_div(n, meta["BLOCK_N"]), meta["SPLIT_K"], m_tiles)  # noqa: E731
        _w4_mm_tuned[grid](*args, **consts)
    else:
        cfg = {"BLOCK_N": 16, "SPLIT_K": 2, "UNROLL": 2, "num_warps": 4, **(config or {})}
        grid = (ceil_div(n, cfg["BLOCK_N"]), cfg["SPLIT_K"], m_tiles)
        _w4_mm_kernel[grid](*args, **consts, **cfg)
    return y

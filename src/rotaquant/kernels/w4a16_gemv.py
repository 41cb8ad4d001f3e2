"""Triton W4A16 matmul for few rows (decode): int4 codes, float32 group scales, fp16/bf16 in and out;
and a one-pass dequantization kernel for many rows (prefill: dequantize, then a cuBLAS matmul).

Decode at batch 1..16 reads every weight once per token, so it is bound by memory bandwidth, and
by kernel launches for small layers. torch's int4 kernel (``aten._weight_int4pack_mm``,
tinygemm) takes bfloat16 only, so an fp16 model pays two casts per linear around it; this kernel
reads the activations in their own dtype, unpacks two nibbles per byte, dequantizes a tile of
weights in registers exactly as :meth:`~rotaquant.quant.qlinear.QuantLinear.dequantize` does
(``(u - z) * s`` in float32, rounded to the activation dtype) and multiplies it with ``tl.dot``
(float32 accumulation), so it equals the reference path up to accumulation order.

Up to :data:`GEMV_MAX_ROWS` rows a split-K GEMV replaces the ``tl.dot`` kernel (whose 16-row tile
walks all of K, too few loads in flight at one row): program ``(i, s)`` dequantizes the same way
the ``BLOCK_N`` rows ``i`` of W over the K slice ``s`` of ``SPLIT`` and multiplies them with x's
rows in float32 (broadcast multiply + ``tl.sum``); a second kernel adds the ``SPLIT`` float32
partials in a fixed order (deterministic, no atomics). Tiles and ``SPLIT`` are autotuned.

Layout (built by :func:`pack_w4`): ``packed`` uint8 ``[N, K/2]`` with element ``2j`` in the low
nibble and ``2j+1`` in the high one, unsigned (``u = code + 8``); ``scale`` and ``zp`` float32
``[N, G]`` with ``zp = zero + 8``, so ``w = (u - zp) * scale``.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
    import triton.testing
except ImportError:  # CPU-only installs: the kernel is simply unavailable
    triton = None

BLOCK_M = 16  # tl.dot needs 16 rows; decode batches up to 16 fill one tile
GEMV_MAX_ROWS = 4  # rows served by the split-K GEMV, at most 4 (0: the tl.dot kernel up to 16 rows)


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


GEMV_SPLITS = (1, 2, 4, 8, 16)
# (BLOCK_N, BLOCK_K, num_warps): 32 or 64 float32 weights per thread
GEMV_TILES = ((32, 64, 2), (64, 64, 4), (128, 64, 8), (16, 128, 2), (32, 128, 4), (64, 128, 4), (128, 128, 8),
              (16, 256, 2), (16, 256, 4), (32, 256, 4), (64, 256, 8), (16, 512, 4), (32, 512, 8))
GEMV_STAGES = (2, 3, 4)
MAX_THREAD_ELEMENTS = 128  # BLOCK_M * BLOCK_N * BLOCK_K products per thread (registers)


def gemv_config_ok(bn: int, bk: int, split: int, warps: int, stages: int, k: int, group: int | None,
                   block_m: int = 1) -> bool:
    """Whether a GEMV config can run on ``k`` columns in groups of ``group``: each K slice
    (``k / split``) is whole K tiles and each K tile whole groups. Left out as well (slow, and
    each config costs a compile when autotuning): more than 2 pipeline stages on a slice of fewer
    than twice as many K tiles, more than :data:`MAX_THREAD_ELEMENTS` products per thread."""
    g = group or 1
    if bk % g or k % (split * bk):
        return False
    tiles = k // split // bk
    return (stages == 2 or 2 * stages <= tiles) and block_m * bn * bk <= MAX_THREAD_ELEMENTS * 32 * warps


@functools.cache
def _max_split(k: int, group: int | None, block_m: int) -> int:
    """The largest SPLIT of any GEMV config that fits (the partials buffer's size)."""
    splits = [sp for sp in GEMV_SPLITS for bn, bk, w in GEMV_TILES
              if gemv_config_ok(bn, bk, sp, w, 2, k, group, block_m)]
    if not splits:
        raise ValueError(f"w4a16_gemv: no GEMV tile (BLOCK_N, BLOCK_K, warps) of {GEMV_TILES} fits K={k} in "
                         f"groups of {group} at {block_m} rows")
    return max(splits)


def _prune_gemv(configs, nargs, **kwargs):
    group = kwargs["G"] if not kwargs["PER_CHANNEL"] else None
    return [c for c in configs
            if gemv_config_ok(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["SPLIT"], c.num_warps,
                              c.num_stages, kwargs["K"], group, kwargs["BLOCK_M"])]


def _sum_partials(partials: torch.Tensor, y: torch.Tensor, split: int) -> None:
    """``y`` from the first ``split`` float32 partials ``[split, M, N]`` (nothing when ``split`` is 1:
    the GEMV wrote ``y``)."""
    if split > 1:
        mn = y.numel()
        _split_sum_kernel[(triton.cdiv(mn, 1024),)](partials, y, mn, SPLIT=split, BLOCK=1024, num_warps=4)


def _time_with_sum(nargs, exception):
    # autotuning times each config with its partials' sum, which SPLIT > 1 costs as well
    if exception is None:
        _sum_partials(nargs["p_ptr"], nargs["y_ptr"], nargs["SPLIT"])


if triton is not None:

    @triton.autotune(
        configs=[triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT": sp}, num_warps=w, num_stages=st)
                 for bn, bk, w in GEMV_TILES for sp in GEMV_SPLITS for st in GEMV_STAGES],
        key=["N", "K", "G", "BLOCK_M"],
        prune_configs_by={"early_config_prune": _prune_gemv},
        post_hook=_time_with_sum,
        # microsecond kernels, ~100 configs: 25 ms of repeats each instead of Triton's 100 ms
        do_bench=lambda call, quantiles: triton.testing.do_bench(call, warmup=5, rep=25, quantiles=quantiles),
    )
    @triton.jit
    def _w4a16_gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, p_ptr, y_ptr, M, N, n_groups, stride_xm, stride_ym,
                           K: tl.constexpr, G: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr):
        # K is a compile-time constant: static loop bounds (pipelined; and the interpreter runs them)
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        KS: tl.constexpr = K // SPLIT
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_ok = offs_m < M
        n_ok = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kk in range(0, KS, BLOCK_K):
            k0 = pid_s * KS + kk
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=m_ok[:, None], other=0.0)
            w = _dequant_tile(w_ptr, s_ptr, z_ptr, offs_n, n_ok, k0, K, n_groups, G, PER_CHANNEL, BLOCK_N, BLOCK_K)
            w = w.to(x.dtype).to(tl.float32)  # the reference's rounding to the activation dtype
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w[None, :, :], axis=2)
        out_ok = m_ok[:, None] & n_ok[None, :]
        if SPLIT == 1:
            tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
                     mask=out_ok)
        else:
            tl.store(p_ptr + pid_s * M * N + offs_m[:, None] * N + offs_n[None, :], acc, mask=out_ok)

    @triton.jit
    def _split_sum_kernel(p_ptr, y_ptr, MN, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
        # y = partial 0 + partial 1 + ... in this order: the same bits on every run
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < MN
        acc = tl.load(p_ptr + offs, mask=ok, other=0.0)
        for s in tl.static_range(1, SPLIT):
            acc += tl.load(p_ptr + s * MN + offs, mask=ok, other=0.0)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=ok)


def w4a16_gemv(x2: torch.Tensor, ops: dict, group: int | None, config: dict | None = None) -> torch.Tensor:
    """``x2 @ W^T`` like :func:`w4a16_matmul`, by the split-K GEMV (meant for a few rows).

    ``config``: a fixed ``{"BLOCK_N", "BLOCK_K", "SPLIT", "num_warps", "num_stages"}`` instead of
    the autotuned choice (tests; the interpreter cannot time configs)."""
    m, k = x2.shape
    n = ops["packed"].shape[0]
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    if m > 4:  # BLOCK_M 1, 2, 4: more rows would spill registers
        raise ValueError(f"w4a16_gemv: {m} rows, it serves 1 to 4 (GEMV_MAX_ROWS must be at most 4)")
    y = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    if m == 0:
        return y
    per_channel = group is None
    block_m = triton.next_power_of_2(m)
    if config is not None and not gemv_config_ok(config["BLOCK_N"], config["BLOCK_K"], config["SPLIT"],
                                                 config["num_warps"], config["num_stages"], k, group, block_m):
        raise ValueError(f"w4a16_gemv: config {config} does not fit K={k}, group {group}, {m} rows")
    max_split = config["SPLIT"] if config is not None else _max_split(k, group, block_m)
    partials = torch.empty(max_split, m, n, dtype=torch.float32, device=x2.device)  # SPLIT 1: unused
    args = (x2, ops["packed"], ops["scale"], ops["zp"], partials, y, m, n, ops["scale"].shape[1], x2.stride(0),
            y.stride(0))
    consts = dict(K=k, G=1 if per_channel else group, PER_CHANNEL=per_channel, BLOCK_M=block_m)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT"])  # noqa: E731
    if config is None:
        _w4a16_gemv_kernel[grid](*args, **consts)
        split = _w4a16_gemv_kernel.best_config.kwargs["SPLIT"]
    else:
        _w4a16_gemv_kernel.fn[grid(config)](*args, **consts, **config)
        split = config["SPLIT"]
    _sum_partials(partials, y, split)
    return y


def w4a16_matmul(x2: torch.Tensor, ops: dict, group: int | None) -> torch.Tensor:
    """``x2 @ W^T`` for ``x2`` ``[M, K]`` (fp16/bf16, CUDA) and the :func:`pack_w4` operands ``ops``
    of ``W`` ``[N, K]`` with groups of ``group`` (None: one scale per output channel)."""
    m, k = x2.shape
    if m <= GEMV_MAX_ROWS:
        return w4a16_gemv(x2, ops, group)
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

"""GPTQ (Frantar et al., 2022) for one linear weight, and the Hessian it needs.

The layer's calibration inputs give ``H = 2/N sum_n x_n x_n^T`` (:class:`HessianAccumulator`).
GPTQ quantizes the weight ``W`` ``[out, in]`` one input column at a time, on exactly the grids
of :mod:`rotaquant.quant.quantizer` (the same ones RTN uses), and spreads each column's rounding
error over the columns not yet quantized through the upper Cholesky factor of ``H^-1``, so
that the layer-output error ``tr((W - Q) H (W - Q)^T)`` (:func:`quantization_objective`) stays
small. Columns are processed in blocks with lazy updates of the rest of the matrix.

Where the quantization parameters come from:

* per-channel (``group_size=None``): one ``(scale, zero)`` per output row, computed once from
  the whole original row (after zeroing dead columns), with the optional clipping search;
* groups, ``static_groups=False``: the parameters of a group are computed when GPTQ reaches
  the first column of that group, from the current (error-updated) values of all the group's
  columns. Groups are always consecutive ranges of *original* column indices, also with
  ``act_order`` (so a deployed kernel needs no column-to-group map);
* groups, ``static_groups=True``: all groups' parameters are computed upfront from the
  original (un-updated) weight, exactly as RTN would.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ..errors import ConfigError, RotaquantError
from .quantizer import QuantSpec, compute_dtype, quantize_dequantize
from .rtn import weight_quant_params

logger = logging.getLogger(__name__)

DAMP_RETRIES = 4  # each retry multiplies the damping by 10


class NonFiniteActivationError(RotaquantError, ValueError):
    """Calibration activations contain NaN or Inf."""


class GPTQError(RotaquantError, ValueError):
    """GPTQ cannot run: inconsistent shapes, no calibration data, or a Hessian that cannot be
    factored even with much more damping."""


@contextmanager
def tf32_matmul():
    """CUDA float32 matmuls on TF32 tensor cores for the block (the previous setting restored).

    For float32 operands converted from float16/bfloat16 (a model's activations) TF32 loses
    nothing: its 10-bit mantissa and float32's exponent range hold every float16 and bfloat16
    value, and the products accumulate in float32. Only the summation order differs from the
    IEEE float32 kernel. (H200, GPTQ of a LLaMA-7B-shaped fp16 layer on 128 x 2048 tokens:
    3.51 -> 3.34 s, GPTQv2 6.57 -> 5.26 s.)"""
    m = torch.backends.cuda.matmul
    old = m.fp32_precision
    m.fp32_precision = "tf32"
    try:
        yield
    finally:
        m.fp32_precision = old


class HessianAccumulator:
    """Running ``H = 2/N sum x x^T`` over all ``N`` rows (tokens) added so far.

    Args:
        in_features: size of the last dim of the activations.
        device: where ``H`` lives (activations are moved there).
        dtype: float32 (default) or float64.
        name: layer name, used in error messages.
        check_each: check every added batch for NaN/Inf (a host sync per batch). With False the
            check runs once, on the Hessian's diagonal, when :attr:`hessian` is read (a
            non-finite input always makes its diagonal entry non-finite).
    """

    def __init__(self, in_features: int, device=None, dtype: torch.dtype = torch.float32, name: str | None = None,
                 check_each: bool = True):
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features <= 0:
            raise ConfigError(f"in_features must be a positive integer, got {in_features!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"HessianAccumulator dtype must be float32 or float64, got {dtype}")
        self.in_features = in_features
        self.name = name
        self._hessian = torch.zeros(in_features, in_features, device=device, dtype=dtype)
        self._nsamples = 0
        self.check_each = check_each
        self._checked = check_each

    def _where(self) -> str:
        return f" of {self.name}" if self.name else ""

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Accumulate activations ``x`` ``[..., in_features]`` (every leading index is a row).

        Raises :class:`NonFiniteActivationError` (naming the layer and how many values are bad)
        if ``x`` holds NaN or Inf; the accumulated Hessian is then left unchanged. Without
        ``check_each`` the error comes when :attr:`hessian` is read.
        """
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise GPTQError(f"activations{self._where()} have shape {tuple(x.shape)}; "
                            f"expected [..., {self.in_features}]")
        rows = x.detach().reshape(-1, self.in_features)
        n = rows.shape[0]
        if n == 0:
            return
        half = rows.dtype in (torch.float16, torch.bfloat16)
        rows = rows.to(device=self._hessian.device, dtype=self._hessian.dtype)
        self._checked = self.check_each
        finite = torch.isfinite(rows) if self.check_each else None
        if finite is not None and not bool(finite.all()):
            bad = rows[~finite]
            nans = int(torch.isnan(bad).sum())
            raise NonFiniteActivationError(
                f"calibration activations{self._where()} contain {bad.numel()} non-finite values "
                f"({nans} NaN, {bad.numel() - nans} Inf) out of {rows.numel()}; check the model "
                "weights and calibration data, or run the model in a wider dtype (float32)"
            )
        total = self._nsamples + n
        self._hessian.mul_(self._nsamples / total)
        exact_tf32 = half and rows.is_cuda and rows.dtype == torch.float32  # see tf32_matmul
        with tf32_matmul() if exact_tf32 else nullcontext():
            self._hessian.addmm_(rows.T, rows, alpha=2.0 / total)
        self._nsamples = total

    @property
    def hessian(self) -> torch.Tensor:
        """The accumulated ``[in_features, in_features]`` Hessian (the live tensor; do not modify).

        Raises :class:`GPTQError` if no rows were added (an all-zero Hessian would make GPTQ
        zero the whole weight; quantize such a layer with RTN instead).
        """
        if self._nsamples == 0:
            raise GPTQError(f"no calibration activations were added{self._where()}; "
                            "the layer was never called (use RTN for it)")
        if not self._checked:
            bad = int((~torch.isfinite(torch.diagonal(self._hessian))).sum())
            if bad:
                raise NonFiniteActivationError(
                    f"calibration activations{self._where()} contain non-finite values ({bad} of "
                    f"{self.in_features} inputs are NaN/Inf somewhere, or their squares overflow); check the "
                    "model weights and calibration data, or run the model in a wider dtype (float32)")
            self._checked = True
        return self._hessian

    @property
    def nsamples(self) -> int:
        """Number of rows (tokens) accumulated."""
        return self._nsamples


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ settings: the arguments of one algorithm call (:func:`gptq_quantize_weight`), not a job
    config. Jobs and YAML set the recipe's ``gptq_*`` keys (a validated StrictModel); the pipeline
    builds this small frozen value from them, torchao-style (checked in ``__post_init__``).

    Attributes:
        damp: added to ``H``'s diagonal, relative to its mean diagonal (>= 0).
        block_size: columns per block of lazy updates (> 0); does not change the result
            beyond float rounding.
        act_order: quantize columns in order of decreasing ``H`` diagonal.
        static_groups: compute all group parameters upfront from the original weight.
        v2: GPTQv2 / GPTAQ asymmetric calibration in the layer-by-layer pipeline
            (:mod:`rotaquant.quant.gptq_v2`): the target is the FP layer on FP inputs.
    """

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    static_groups: bool = False
    v2: bool = False  # GPTAQ: match the FP layer on FP inputs (see rotaquant.quant.gptq_v2)

    def __post_init__(self):
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not (
            math.isfinite(self.damp) and self.damp >= 0
        ):
            raise ConfigError(f"GPTQ damp must be a finite number >= 0, got {self.damp!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ConfigError(f"GPTQ block_size must be a positive integer, got {self.block_size!r}")


def quantization_objective(w: torch.Tensor, wq: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr((W - Q) H (W - Q)^T)`` in float64: the layer-output error GPTQ minimises."""
    d = (w.detach().double() - wq.detach().double().to(w.device))
    h = hessian.detach().to(device=d.device, dtype=torch.float64)
    return float(((d @ h) * d).sum())


def _inverse_hessian_factor(h: torch.Tensor, damp: float, where: str) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + lam I)^-1`` (``U^T U``), in float64.

    ``lam = damp * mean(diag H)``; if a factorization fails the damping is multiplied by 10,
    up to :data:`DAMP_RETRIES` times, with a warning.
    """
    mean_diag = float(torch.diagonal(h).mean())
    base = max(damp, 1e-4)
    tries = [damp] + [base * 10**k for k in range(1, DAMP_RETRIES + 1)]
    for attempt, d in enumerate(tries):
        damped = h.clone()
        damped.diagonal().add_(d * mean_diag)
        chol, info = torch.linalg.cholesky_ex(damped)
        del damped
        if int(info) != 0:
            continue
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
        del chol
        if int(info) == 0 and bool(torch.isfinite(upper).all()):
            if attempt:
                logger.warning("GPTQ%s: the Hessian needed damping %g instead of %g to factor", where, d, damp)
            return upper
    raise GPTQError(f"GPTQ{where}: the Hessian is not positive definite even with damping {tries[-1]:g} "
                    "(relative to its mean diagonal); check the calibration activations")


def _kernel_backend(W: torch.Tensor, spec: QuantSpec, block_size: int, backend: str | None) -> bool:
    """Whether the block loop runs in the Triton kernel (see ``backend`` of gptq_quantize_weight).

    Both paths keep the inverse-Hessian factor in one layout, so the shared trailing-update matmul
    sums in one order and the kernel matches the torch loop bit for bit, dynamic groups included
    (H200, Triton 3.6: all kernel-vs-loop cases; an earlier layout difference moved dynamic
    groups' parameters by an ulp)."""
    if backend not in (None, "torch", "triton"):
        raise ConfigError(f"unknown GPTQ backend {backend!r}; use 'torch', 'triton' or None (automatic)")
    if backend == "torch":
        return False
    from ..kernels import triton_available

    # the kernel rounds to integer codes (any scale convention: the parameters come from torch)
    fits = W.dtype == torch.float32 and block_size <= 256 and getattr(spec, "type", "int") == "int"
    if backend == "triton":
        if not fits:
            raise ConfigError(f"the GPTQ kernel needs a float32 weight, an integer grid and block_size <= 256, got "
                              f"{W.dtype}, {spec} and {block_size}; use backend='torch' or None")
        return True
    return fits and W.is_cuda and triton_available()


@torch.no_grad()
def gptq_quantize_weight(w: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, cfg: GPTQConfig | None = None,
                         clip_search: bool = False, *, return_params: bool = False, name: str | None = None,
                         backend: str | None = None):
    """GPTQ fake quantization of a linear weight ``w`` ``[out, in]`` given its Hessian ``[in, in]``.

    Args:
        w: the weight (any float dtype; computed in float32, float64 for float64 ``w``).
        hessian: ``2/N X^T X`` of the layer inputs (:class:`HessianAccumulator`). Inputs with a
            zero diagonal entry (dead inputs) get a diagonal of 1 and their weight column 0.
        spec: the grid (shared with RTN); ``group_size`` groups the input dim.
        cfg: :class:`GPTQConfig` (default settings when ``None``).
        clip_search: choose the parameters with RTN's clipping search
            (:func:`~rotaquant.quant.rtn.search_clip_params`) instead of the plain min/max.
        return_params: also return ``(scale, zero)``, shaped ``[out, G, 1]`` with groups in
            original column order, so that ``fake_quantize(wq, spec, scale, zero) == wq``.
        name: layer name for log and error messages.
        backend: ``"torch"`` (the column loop, the reference), ``"triton"`` (one kernel launch per
            block, :mod:`rotaquant.kernels.gptq_triton`; bit-identical results) or ``None``: the
            kernel where it can run (a CUDA float32 weight, blocks of at most 256 columns, Triton
            installed; per channel or static groups), else the loop.

    Returns:
        The quantized weight, same shape and dtype as ``w`` (or ``(wq, scale, zero)``). A
        disabled spec returns ``w`` itself (parameters ``None``). See the module docstring for
        where the parameters come from.
    """
    cfg = cfg if cfg is not None else GPTQConfig()
    if not spec.enabled:
        return (w, None, None) if return_params else w
    where = f" ({name})" if name else ""
    if w.dim() != 2:
        raise GPTQError(f"GPTQ{where} needs a 2-D weight [out, in], got shape {tuple(w.shape)}")
    rows, cols = w.shape
    if tuple(hessian.shape) != (cols, cols):
        raise GPTQError(f"GPTQ{where}: Hessian shape {tuple(hessian.shape)} does not match the weight's "
                        f"input size {cols}")
    gs = spec.group_size
    if gs is not None and cols % gs:
        raise ConfigError(f"group_size {gs} does not divide the input dimension {cols}{where}")
    dtype = compute_dtype(w)
    W = w.detach().to(dtype).clone()
    H = hessian.detach().to(device=W.device, dtype=torch.float64).clone()
    if not bool(torch.isfinite(H).all()):
        raise GPTQError(f"GPTQ{where}: the Hessian contains NaN/Inf")
    diag = torch.diagonal(H)
    dead = diag == 0
    n_dead = int(dead.sum())
    if n_dead:
        logger.info("GPTQ%s: %d of %d inputs are never active; their weights are set to 0", where, n_dead, cols)
        diag[dead] = 1.0
        W[:, dead] = 0

    ngroups = cols // gs if gs else 1
    dynamic = gs is not None and not cfg.static_groups
    if dynamic:
        scale = torch.ones(rows, ngroups, 1, dtype=dtype, device=W.device)
        zero = torch.zeros_like(scale)
    else:
        scale, zero = weight_quant_params(W, spec, clip_search)  # [rows, G, 1], from the original W

    if cfg.act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
        invperm = torch.argsort(perm)
        order = perm.tolist()
    else:
        perm = invperm = None
        order = range(cols)
    group_of = [c // gs for c in order] if gs else [0] * cols
    ready = [False] * ngroups
    if dynamic:  # permuted positions of each group's columns
        positions = invperm if invperm is not None else torch.arange(cols, device=W.device)
        members = positions.reshape(ngroups, gs)
    # one memory layout for both backends: the trailing update Err1 @ U[i1:i2, i2:] is a cuBLAS
    # call whose summation order follows U's layout, and dynamic groups take their parameters
    # from the updated columns, so a transposed U in one backend moved them by an ulp (H200)
    U = _inverse_hessian_factor(H, cfg.damp, where).to(dtype).contiguous()
    del H

    Q = torch.empty_like(W)
    use_kernel = _kernel_backend(W, spec, cfg.block_size, backend)
    gidx = torch.tensor(group_of, dtype=torch.int32, device=W.device) if use_kernel else None
    flat_scale = scale.view(rows, ngroups) if use_kernel else None
    flat_zero = zero.view(rows, ngroups) if use_kernel else None
    for i1 in range(0, cols, cfg.block_size):
        i2 = min(i1 + cfg.block_size, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        # a block is cut where a dynamic group starts: its parameters need the columns' current values
        starts, seen = [], set()
        for i in range(i2 - i1) if dynamic else ():
            g = group_of[i1 + i]
            if not ready[g] and g not in seen:
                starts.append(i)
                seen.add(g)
        for s0, s1 in zip([0, *starts], [*starts, i2 - i1], strict=True):
            if s0 == s1:
                continue
            g = group_of[i1 + s0]
            if dynamic and not ready[g]:
                # current values of the group's columns (all still unquantized): the block-start
                # values minus the error feedback of this block's columns so far
                idx = members[g]
                current = W[:, idx] - Err1[:, :s0] @ U[i1:i1 + s0, idx]
                s, z = weight_quant_params(current, spec, clip_search)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
                ready[g] = True
            if use_kernel:
                from ..kernels.gptq_triton import gptq_segment

                gptq_segment(W1, Q, Err1, U, i1, flat_scale, flat_zero, gidx, s0, s1, spec.qmin, spec.qmax)
                continue
            for i in range(s0, s1):
                g = group_of[i1 + i]
                x = W1[:, i:i + 1]
                q = quantize_dequantize(x, scale[:, g], zero[:, g], spec)
                Q[:, i1 + i:i1 + i + 1] = q
                err = (x - q) / U1[i, i]
                W1[:, i:] -= err @ U1[i:i + 1, i:]
                Err1[:, i:i + 1] = err
        if i2 < cols:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    if invperm is not None:
        Q = Q[:, invperm]
    out = Q.to(w.dtype)
    return (out, scale, zero) if return_params else out

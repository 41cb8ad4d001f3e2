"""GPTQ (Frantar et al., 2022) for one linear weight, and the Hessian it needs.

Columns are quantized one at a time on the same grids as RTN; each column's rounding error is
spread over the columns not yet quantized, weighted by the inverse Hessian ``H = 2/N X^T X``
of the layer's inputs, so the layer output error ``tr((W - Q) H (W - Q)^T)`` stays small.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import ConfigError, RotaquantError
from .quantizer import QuantSpec, dequantize, quantize_to_int
from .rtn import weight_params

logger = logging.getLogger(__name__)


class NonFiniteActivationError(RotaquantError, ValueError):
    """Calibration activations contain NaN or Inf."""


class GPTQError(RotaquantError):
    """GPTQ could not factor the Hessian even with extra damping."""


class HessianAccumulator:
    """Running ``H = 2/N sum x x^T`` over the rows of every added activation tensor."""

    def __init__(self, in_features: int, device=None, dtype: torch.dtype = torch.float32, name: str = ""):
        self.name = name
        self.hessian = torch.zeros(in_features, in_features, device=device, dtype=dtype)
        self.nsamples = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Accumulate activations ``x`` [..., in_features]."""
        rows = x.reshape(-1, x.shape[-1])
        bad = (~torch.isfinite(rows)).sum().item()
        if bad:
            where = f" at {self.name}" if self.name else ""
            raise NonFiniteActivationError(
                f"calibration activations{where} contain {bad} NaN/Inf values; check the model "
                "weights and the calibration text (or use a wider dtype)"
            )
        rows = rows.to(self.hessian.dtype)
        n = rows.shape[0]
        total = self.nsamples + n
        self.hessian.mul_(self.nsamples / total)
        self.hessian.addmm_(rows.T, rows, alpha=2.0 / total)
        self.nsamples = total


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ settings: relative damping, block size, act-order, static groups."""

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    static_groups: bool = False

    def __post_init__(self):
        if self.damp < 0:
            raise ConfigError(f"GPTQ damp must be >= 0, got {self.damp}")
        if self.block_size <= 0:
            raise ConfigError(f"GPTQ block_size must be > 0, got {self.block_size}")


def quantization_objective(w: torch.Tensor, wq: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr((W - Q) H (W - Q)^T)``: the layer-output error GPTQ minimises."""
    d = (w - wq).double()
    return torch.einsum("ij,jk,ik->", d, hessian.double(), d).item()


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag) I)^-1``, damping more if needed."""
    mean_diag = torch.mean(torch.diag(h)).item()
    eye = torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
    for attempt in range(4):
        lam = max(damp, 1e-6) * 10**attempt * mean_diag
        chol, info = torch.linalg.cholesky_ex(h + lam * eye)
        if info.item() == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if info.item() == 0:
                if attempt:
                    logger.warning("GPTQ: Hessian needed %gx the damping", 10**attempt)
                return upper
    raise GPTQError("the Hessian is not positive definite even with 1000x damping")


@torch.no_grad()
def gptq_quantize_weight(w: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec,
                         cfg: GPTQConfig = GPTQConfig(), clip_search: bool = False) -> torch.Tensor:
    """GPTQ-quantized copy of ``w`` [out, in] (same dtype), computed in float32.

    Per-channel parameters come from the whole (dead-column-zeroed) weight. With groups, each
    group's parameters are computed when its first column is reached, from the weight as GPTQ
    has updated it so far; with ``static_groups`` (and always with ``act_order`` + groups, so a
    column's group is its original index) all groups' parameters come from the original weight.
    """
    if not spec.enabled:
        return w
    W = w.detach().float().clone()
    rows, cols = W.shape
    H = hessian.detach().to(W.device, torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    gs = spec.group_size
    if gs is not None and cols % gs:
        raise ConfigError(f"group size {gs} does not divide the input size {cols}")
    static = gs is not None and (cfg.static_groups or cfg.act_order)
    if gs is None:
        scale, zero = (t[:, 0] for t in weight_params(W, spec, clip_search))
    elif static:
        all_scale, all_zero = weight_params(W, spec, clip_search)  # [rows, groups, 1]
    perm = torch.argsort(torch.diag(H), descending=True) if cfg.act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    Hinv = _inverse_cholesky(H, cfg.damp)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, cfg.block_size):
        i2 = min(i1 + cfg.block_size, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if gs is not None:
                if static:
                    g = (perm[col].item() if perm is not None else col) // gs
                    scale, zero = all_scale[:, g], all_zero[:, g]
                elif col % gs == 0:
                    block = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :gs]
                    scale, zero = (t[:, 0] for t in weight_params(block, spec, clip_search))
            x = W1[:, i : i + 1]
            q = dequantize(quantize_to_int(x, scale, zero, spec), scale, zero)
            Q[:, col : col + 1] = q
            err = (x - q) / Hinv1[i, i]
            W1[:, i:] -= err @ Hinv1[i : i + 1, i:]
            Err1[:, i : i + 1] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(w.dtype)

"""Round-to-nearest (RTN) weight quantization, with an optional search of the clipping range.

Weights ``[out, in]`` get one ``(scale, zero)`` per output row, or per row and group of
``group_size`` input columns, on the grids of :mod:`rotaquant.quant.quantizer`. The clipping
search tries the shrunk ranges ``p * (min, max)`` (``p`` from 1 down to ``1 - max_shrink``)
and keeps, for every row (and group), the one with the smallest ``sum |w - q(w)|^norm``.
"""

from __future__ import annotations

import logging
import math
import os

import torch

from ..errors import ConfigError
from .quantizer import QuantSpec, compute_dtype, params_from_range, quantize_dequantize, to_groups

logger = logging.getLogger(__name__)


def _check_search(grid: int, max_shrink: float, norm: float) -> None:
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ConfigError(f"clip search grid must be a positive integer, got {grid!r}")
    if not (isinstance(max_shrink, (int, float)) and 0 <= max_shrink < 1):
        raise ConfigError(f"clip search max_shrink must be in [0, 1), got {max_shrink!r}")
    if not (isinstance(norm, (int, float)) and math.isfinite(norm) and norm > 0):
        raise ConfigError(f"clip search norm must be a positive number, got {norm!r}")


def shrink_factors(grid: int = 100, max_shrink: float = 0.8) -> list[float]:
    """The candidate range factors: ``grid`` points evenly from 1 down to ``1 - max_shrink``."""
    _check_search(grid, max_shrink, 1.0)
    if grid == 1:
        return [1.0]
    return [1.0 - max_shrink * i / (grid - 1) for i in range(grid)]


CLIP_KERNEL_ENV = "ROTAQUANT_CLIP_KERNEL"  # "1": search with the Triton kernel on CUDA (opt-in until timed)


def _kernel_applies(x: torch.Tensor, spec: QuantSpec) -> bool:
    """Whether :func:`search_clip_params` runs :mod:`rotaquant.kernels.clip_search`: a float32
    CUDA tensor, an integer grid, Triton usable, and ``ROTAQUANT_CLIP_KERNEL=1``."""
    if os.environ.get(CLIP_KERNEL_ENV) != "1" or not x.is_cuda or x.dtype != torch.float32 or spec.type != "int":
        return False
    from ..kernels import triton_available

    return triton_available()


@torch.no_grad()
def search_clip_params(x: torch.Tensor, spec: QuantSpec, grid: int = 100, max_shrink: float = 0.8,
                       norm: float = 2.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, zero)`` of ``x`` ``[..., n]`` minimising ``sum |x - q(x)|^norm``.

    Candidate ranges are ``p * clip_ratio * (min, max)`` of each row for ``p`` in
    :func:`shrink_factors`; ties keep the larger range, and ``p = 1`` (plain RTN) is always a
    candidate, so the result is never worse than RTN for this objective. Returns tensors of
    shape ``[..., 1]`` in float32 (float64 for float64 ``x``).
    """
    _check_search(grid, max_shrink, norm)
    x = x.to(compute_dtype(x))
    if _kernel_applies(x, spec):
        from ..kernels.clip_search import search_clip_rows

        rows = x.reshape(-1, x.shape[-1])
        scale, zero = search_clip_rows(rows if rows.is_contiguous() else rows.contiguous(), spec,
                                       shrink_factors(grid, max_shrink), norm)
        return scale.reshape(*x.shape[:-1], 1), zero.reshape(*x.shape[:-1], 1)
    lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
    lo, hi = lo * spec.clip_ratio, hi * spec.clip_ratio
    best_scale = best_zero = best_err = None
    for p in shrink_factors(grid, max_shrink):
        scale, zero = params_from_range(lo * p, hi * p, spec)
        err = (quantize_dequantize(x, scale, zero, spec) - x).abs_().pow_(norm).sum(-1, keepdim=True)
        if best_err is None:
            best_scale, best_zero, best_err = scale, zero, err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


@torch.no_grad()
def weight_quant_params(w: torch.Tensor, spec: QuantSpec, clip_search: bool = False, grid: int = 100,
                        max_shrink: float = 0.8, norm: float = 2.4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` of a weight ``[..., in]`` per row (and group): shape ``[..., G, 1]``.

    Without ``clip_search`` these are exactly :func:`~rotaquant.quant.quantizer.quant_params`;
    with it, the per-row/group best of :func:`search_clip_params`.
    """
    if clip_search:
        return search_clip_params(to_groups(w, spec), spec, grid, max_shrink, norm)
    g = to_groups(w, spec).to(compute_dtype(w))
    lo, hi = torch.aminmax(g, dim=-1, keepdim=True)
    return params_from_range(lo * spec.clip_ratio, hi * spec.clip_ratio, spec)


@torch.no_grad()
def rtn_quantize_weight(w: torch.Tensor, spec: QuantSpec, clip_search: bool = False, grid: int = 100,
                        max_shrink: float = 0.8, norm: float = 2.4, return_params: bool = False):
    """Round-to-nearest fake quantization of a weight ``w`` ``[out, in]``.

    Args:
        w: the weight (any float dtype, any leading shape; quantized along the last dim).
        spec: the grid; ``group_size`` groups the input dim. Disabled specs return ``w`` itself.
        clip_search: search each row's (group's) clipping range, see :func:`search_clip_params`.
        grid, max_shrink, norm: the search's number of candidates, smallest factor
            ``1 - max_shrink`` and error exponent.
        return_params: also return ``(scale, zero)``.

    Returns:
        The fake-quantized weight (same shape and dtype as ``w``, computed in float32, or
        float64 for float64 ``w``); with ``return_params``, ``(wq, scale, zero)`` where
        ``scale``/``zero`` are ``[out, G, 1]`` float tensors (``G`` groups, 1 when ungrouped),
        so ``fake_quantize(w, spec, scale, zero)`` reproduces ``wq``. For a disabled spec the
        parameters are ``None``.
    """
    if not spec.enabled:
        return (w, None, None) if return_params else w
    work = w.detach().to(compute_dtype(w))
    scale, zero = weight_quant_params(work, spec, clip_search, grid, max_shrink, norm)
    out = quantize_dequantize(to_groups(work, spec), scale, zero, spec).reshape(w.shape).to(w.dtype)
    if clip_search and logger.isEnabledFor(logging.DEBUG):
        logger.debug("RTN clip search: mean scale %.4g", scale.mean().item())
    return (out, scale, zero) if return_params else out

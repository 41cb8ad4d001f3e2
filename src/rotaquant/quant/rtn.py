"""Round-to-nearest weight quantization, with an optional search of the clipping range."""

from __future__ import annotations

import torch

from .quantizer import QuantSpec, dequantize, grouped, params_from_range, quantize_to_int


def search_params(x: torch.Tensor, spec: QuantSpec, grid: int = 100, max_shrink: float = 0.8,
                  norm: float = 2.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of a 2-D ``x`` [rows, n] minimising sum |x - q(x)|^norm.

    Tries the ranges ``p * [min, max]`` for ``p`` from 1 down to ``1 - max_shrink`` (``grid``
    steps) and keeps, for each row, the best. Returns tensors of shape [rows, 1].
    """
    xmin, xmax = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    best_scale, best_zero = params_from_range(xmin, xmax, spec)
    best_err = torch.full_like(xmin, float("inf"))
    for step in range(grid):
        p = 1 - max_shrink * step / grid
        scale, zero = params_from_range(p * xmin, p * xmax, spec)
        err = (dequantize(quantize_to_int(x, scale, zero, spec), scale, zero) - x).abs().pow(norm).sum(1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def weight_params(w: torch.Tensor, spec: QuantSpec, clip_search: bool = False, **search) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) of a weight [out, in] per output channel or group: shape [out, groups, 1]."""
    g = grouped(w, spec)
    rows, groups, size = g.shape
    flat = g.reshape(rows * groups, size)
    if clip_search:
        scale, zero = search_params(flat, spec, **search)
    else:
        scale, zero = params_from_range(flat.amin(1, keepdim=True), flat.amax(1, keepdim=True), spec)
    return scale.reshape(rows, groups, 1), zero.reshape(rows, groups, 1)


@torch.no_grad()
def rtn_quantize_weight(w: torch.Tensor, spec: QuantSpec, clip_search: bool = False,
                        return_params: bool = False, **search):
    """Fake-quantized copy of ``w`` [out, in] (same dtype), computed in float32.

    With ``return_params`` also returns (scale, zero) shaped [out, groups, 1].
    """
    if not spec.enabled:
        return (w, None, None) if return_params else w
    work = w.detach().float()
    scale, zero = weight_params(work, spec, clip_search, **search)
    q = dequantize(quantize_to_int(grouped(work, spec), scale, zero, spec), scale, zero)
    out = q.reshape(w.shape).to(w.dtype)
    return (out, scale, zero) if return_params else out

"""Fused (offline) rotations: rotate weights so that the model computes the same function.

Conventions (those of ModelOpt's configs): for a linear with weight ``W [out, in]`` an *input*
rotation ``R`` gives ``W R`` (the layer now reads ``x R``), an *output* rotation gives
``R^T W`` and ``R^T b`` (it now writes ``y R``). A rotation of size ``d`` smaller than the
weight's side ``n`` (``n % d == 0``) acts block-diagonally: per attention head. An embedding's
vectors are rotated, ``E R``, whichever slot names the rotation.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from .matrices import RotationStore
from .spec import RotationConfigError, RotationSpec, pattern_matches

logger = logging.getLogger(__name__)


def right_blocks(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``w`` [..., n] times ``r`` [d, d] on each block of ``d`` columns."""
    n, d = w.shape[-1], r.shape[0]
    return (w.reshape(*w.shape[:-1], n // d, d) @ r).reshape(w.shape)


def left_t_blocks(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``r^T`` [d, d] times ``w`` [n, ...] on each block of ``d`` rows."""
    n, d = w.shape[0], r.shape[0]
    blocks = w.reshape(n // d, d, -1)
    return torch.matmul(r.T, blocks).reshape(w.shape)


def _fits(size: int, r: torch.Tensor, what: str) -> None:
    if size % r.shape[0]:
        raise RotationConfigError(f"{what}: size {size} is not a multiple of the rotation size {r.shape[0]}")


@torch.no_grad()
def rotate_module(module: nn.Module, r_in: torch.Tensor | None, r_out: torch.Tensor | None,
                  name: str = "", float64: bool = True) -> None:
    """Apply an input and/or output rotation to one module's weight (and bias). In place."""
    work = torch.float64 if float64 else torch.float32
    w = module.weight
    mat = w.detach().to(work)
    if isinstance(module, nn.Embedding):
        for r in (r_in, r_out):
            if r is not None:
                _fits(mat.shape[-1], r, name)
                mat = right_blocks(mat, r.to(mat.device, work))
        w.copy_(mat.to(w.dtype))
        return
    if mat.dim() != 2:
        raise RotationConfigError(f"{name}: expected a 2-D weight, got shape {tuple(mat.shape)}")
    if r_in is not None:
        _fits(mat.shape[1], r_in, f"{name} input")
        mat = right_blocks(mat, r_in.to(mat.device, work))
    if r_out is not None:
        _fits(mat.shape[0], r_out, f"{name} output")
        r = r_out.to(mat.device, work)
        mat = left_t_blocks(mat, r)
        bias = getattr(module, "bias", None)
        if bias is not None:
            bias.copy_(right_blocks(bias.detach().to(work), r).to(bias.dtype))
    w.copy_(mat.to(w.dtype))


def match_modules(model: nn.Module, patterns: dict, strict: bool, what: str) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, pattern) for every module a pattern matches; first pattern wins.

    Only modules with a ``weight`` are considered for ``rotation_config``; ``what`` names the
    config section in errors. With ``strict``, a pattern matching nothing is an error.
    """
    hits, used = [], set()
    for name, module in model.named_modules():
        if not name or ".rq_" in f".{name}":  # rotaquant's own stages are never targets
            continue
        for pattern in patterns:
            if pattern_matches(pattern, name):
                hits.append((name, module, pattern))
                used.add(pattern)
                break
    unused = [p for p in patterns if p not in used]
    if unused:
        if strict:
            raise RotationConfigError(
                f"{what}: pattern(s) {unused} match no module of {type(model).__name__}; fix the "
                "pattern or set strict_patterns: false to skip patterns that do not apply"
            )
        logger.debug("%s: patterns matching nothing were skipped: %s", what, unused)
    return hits


def apply_fused_rotations(model: nn.Module, spec: RotationSpec, store: RotationStore,
                          progress: bool = True) -> int:
    """Rotate every module that ``spec.rotation_config`` names; returns how many were rotated."""
    hits = [h for h in match_modules(model, spec.rotation_config, spec.strict_patterns, "rotation_config")
            if isinstance(getattr(h[1], "weight", None), torch.Tensor)]
    for name, module, pattern in tqdm(hits, desc="fused rotations", unit="mod", disable=not progress):
        rin, rout = spec.rotation_config[pattern]
        rotate_module(
            module,
            store.get(rin, name) if rin else None,
            store.get(rout, name) if rout else None,
            name,
            spec.use_float64,
        )
    return len(hits)

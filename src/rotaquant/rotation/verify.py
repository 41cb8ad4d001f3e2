"""Check that a rotation preserves a model's function (a few tokens, logits before vs after)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .spec import RotationConfigError

# relative max logit change allowed by rotate(verify=True), by the model's dtype: rounding of
# the fused weights alone moves half-precision logits by a percent or more; the structural
# check is the guard that does not depend on precision
VERIFY_TOL = {torch.float64: 1e-6, torch.float32: 1e-3}
HALF_VERIFY_TOL = 1e-1


class FunctionChangedError(RotationConfigError):
    """``rotate(verify=True)`` found different logits after rotating. The model IS rotated
    (changed): discard it and load a fresh copy."""


def probe_ids(model: nn.Module, tokens: int = 12, seed: int = 0) -> torch.Tensor:
    """``[1, tokens]`` seeded random token ids on the model's device."""
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(seed))
    return ids.to(next(model.parameters()).device)


@torch.no_grad()
def probe_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``ids`` in eval mode (train/eval flags restored), float64 on the CPU."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return model(input_ids=ids, use_cache=False).logits.detach().double().cpu()
    finally:
        for m, flag in flags.items():
            m.training = flag


def relative_change(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|`` (NaN counts as a change)."""
    err = float((out - ref).abs().max() / ref.abs().max())
    return err if err == err else float("inf")


def verify_tolerance(model: nn.Module) -> float:
    """The relative logit change allowed for ``model``'s dtype."""
    return VERIFY_TOL.get(next(model.parameters()).dtype, HALF_VERIFY_TOL)


@torch.no_grad()
def rotation_error(model: nn.Module, spec, tokens: int = 12, seed: int = 0) -> float:
    """Relative max logit change when a copy of ``model`` is rotated with ``spec`` (with its
    online rotations). ``model`` itself is not changed."""
    from .rotate import rotate

    ids = probe_ids(model, tokens, seed)
    ref = probe_logits(model, ids)
    rotated = copy.deepcopy(model)
    rotate(rotated, spec, seed=seed, progress=False, check=False)
    return relative_change(probe_logits(rotated, ids), ref)

"""Check that a rotation config preserves a model's function (float64, a few tokens)."""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def rotation_error(model: nn.Module, spec, tokens: int = 12, seed: int = 0) -> float:
    """Relative max logit change when a copy of ``model`` is rotated with ``spec`` (with its
    online rotations). ``model`` itself is not changed."""
    from .rotate import rotate

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(seed))
    ref = model(ids).logits
    rotated = copy.deepcopy(model)
    rotate(rotated, spec, seed=seed, progress=False)
    out = rotated(ids).logits
    return float((out - ref).abs().max() / ref.abs().max())

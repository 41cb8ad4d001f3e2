"""``rotate()``: fold norms, fuse R1/R2 and insert online R3/R4 into a transformers model."""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.registry import ModelEntry, lookup
from .apply import apply_fused_rotations, rotate_module
from .fuse import fold_norm, fuse_norms, untie_embeddings
from .matrices import RotationStore
from .spec import RotationSpec, load_spec

logger = logging.getLogger(__name__)


@dataclass
class RotationState:
    """What :func:`rotate` did to a model: the config, the matrices and the online hooks."""

    spec: RotationSpec | None
    store: RotationStore | None
    online: bool
    handles: list = field(default_factory=list)
    fused_modules: int = 0
    folded_norms: int = 0
    untied: bool = False

    def save(self, path: str | os.PathLike):
        """Write the fused matrices (R1, R2, ...) to a safetensors file."""
        if self.store is None:
            raise ValueError("this rotation was made by registered functions; it has no matrix store")
        return self.store.save(path)


_STATES: weakref.WeakKeyDictionary[nn.Module, RotationState] = weakref.WeakKeyDictionary()


def rotation_state(model: nn.Module) -> RotationState | None:
    """The :class:`RotationState` of a model rotated by :func:`rotate`, else None."""
    return _STATES.get(model)


def resolve_spec(model: nn.Module, config) -> RotationSpec | ModelEntry:
    """``"auto"`` -> the registry's entry for the model class; else a loaded spec."""
    if config in (None, "auto"):
        entry = lookup(model)
        return entry if entry.functional else entry.config
    return load_spec(config)


@torch.no_grad()
def rotate(
    model: nn.Module,
    config="auto",
    mode: str | None = None,
    seed: int = 0,
    rotation_path: str | os.PathLike | None = None,
    online: bool = True,
    progress: bool = True,
) -> RotationState:
    """Rotate ``model`` IN PLACE so that it computes the same function with rotated weights.

    Steps: untie tied embeddings; fold the configured norms into the following linears; fuse
    the offline rotations (R1 on the residual stream, R2 per head on V/O) in float64; and, if
    ``online``, insert the online rotations (R3 on Q/K after RoPE, R4 on the down_proj input).

    Args:
        model: a transformers causal LM (mutated in place).
        config: ``"auto"`` (the registry's config for the model's class), a built-in config
            name (``llama``, ``qwen2``, ``qwen3``, ``mistral``, ``transformer_universal``), a
            YAML path, a dict or a RotationSpec.
        mode: override the mode of every fused matrix (``hadamard``, ``base_hadamard``,
            ``orthogonal``); default: each matrix's own mode.
        seed: seed of the random matrices.
        rotation_path: load fused matrices from a file (rotaquant safetensors or SpinQuant's
            ``R1`` / ``model.layers.{i}.self_attn.R2`` torch format) instead of generating them.
        online: insert online rotations (they are hooks, not saved by ``save_pretrained``).
        progress: show progress bars.

    Returns:
        A :class:`RotationState` (also available later via :func:`rotation_state`).
    """
    if model in _STATES:
        raise RuntimeError("this model is already rotated; load a fresh copy to rotate it again")
    spec = resolve_spec(model, config)
    if isinstance(spec, ModelEntry):
        state = _rotate_with_functions(model, spec, mode, seed)
    else:
        if not online:
            spec = spec.without_online()
        store = RotationStore(spec, model.config, seed=seed, mode=mode)
        if rotation_path is not None:
            store.load(rotation_path)
        state = RotationState(spec, store, online)
        state.untied = untie_embeddings(model)
        if spec.norm_fuse_config is not None:
            state.folded_norms = fuse_norms(model, spec.norm_fuse_config, spec.layers_pattern,
                                            spec.strict_patterns, spec.use_float64)
        state.fused_modules = apply_fused_rotations(model, spec, store, progress)
        if online:
            from .online import apply_online_rotations

            state.handles = apply_online_rotations(model, spec, store)
    _STATES[model] = state
    logger.info("rotated %s: %d norms folded, %d modules rotated, %d online hooks",
                type(model).__name__, state.folded_norms, state.fused_modules, len(state.handles))
    return state


def _rotate_with_functions(model: nn.Module, entry: ModelEntry, mode: str | None, seed: int) -> RotationState:
    """R1 only, from a registration made with functions."""
    from .hadamard import make_rotation

    untied = untie_embeddings(model)
    pairs = entry.norm_linear_pairs(model)
    for i, (norm, linears) in enumerate(pairs):
        fold_norm(norm, list(linears), f"norm[{i}]")
    r1 = make_rotation(model.config.hidden_size, mode or "hadamard", seed=seed)
    targets = entry.residual_linears(model)
    for module, rin, rout in targets:
        rotate_module(module, r1 if rin else None, r1 if rout else None, type(module).__name__)
    return RotationState(None, None, False, fused_modules=len(targets), folded_norms=len(pairs), untied=untied)

"""``rotate()``: fold norms, fuse R1/R2 and insert online R3/R4 into a transformers model."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..config import RotationConfig
from ..errors import ConfigError
from .apply import apply_fused_rotations
from .fuse import fuse_norms, untie_embeddings
from .matrices import RotationFile, RotationStore
from .online import apply_online_rotations
from .registry import lookup
from .spec import RotationSpec, load_spec
from .structure import require_rotation_structure
from .verify import FunctionChangedError, probe_ids, probe_logits, relative_change, verify_tolerance

logger = logging.getLogger(__name__)
RECORD_CHILD = "rq_rotation"


class AlreadyQuantizedError(ConfigError):
    """``rotate()`` was called on a model whose weights are already quantized."""


class AlreadyRotatedError(ConfigError):
    """``rotate()`` was called twice on one model."""


class RotationRecord(nn.Module):
    """A child of a rotated model saying how it was rotated (shows in ``repr``, survives
    ``deepcopy``); it holds no tensors, so exports are unaffected."""

    def __init__(self, summary: dict):
        super().__init__()
        self.summary = dict(summary)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.summary.items())


@dataclass
class RotationState:
    """What :func:`rotate` did to a model: the config, the matrices and counts."""

    spec: RotationSpec
    store: RotationStore
    online: bool
    online_stages: int = 0
    fused_modules: int = 0
    folded_norms: int = 0
    untied: bool = False


def rotation_record(model: nn.Module) -> RotationRecord | None:
    """The :class:`RotationRecord` of a model rotated by :func:`rotate`, else None."""
    return model._modules.get(RECORD_CHILD)


def resolve_spec(model: nn.Module, config) -> RotationSpec:
    """``"auto"`` -> the registry's config for the model class; else a loaded spec."""
    if config in (None, "auto"):
        return lookup(model).config
    return load_spec(config)


def _weights_quantized(model: nn.Module) -> list[str]:
    from ..quant.weights import WEIGHT_CHILD

    return [n for n, m in model.named_modules() if WEIGHT_CHILD in m._modules]


@torch.no_grad()
def rotate(
    model: nn.Module,
    config="auto",
    mode: str | dict | None = None,
    seed: int = 0,
    rotation_path: str | os.PathLike | None = None,
    online: bool = True,
    head_mixing: bool = False,
    progress: bool = True,
    check: bool = True,
    verify: bool = False,
) -> RotationState:
    """Rotate ``model`` IN PLACE so that it computes the same function with rotated weights.

    Steps: untie tied embeddings; fold the configured norms into the following linears; fuse
    the offline rotations (R1 on the residual stream, R2 per head on V/O) in float64; and, if
    ``online``, insert the online rotations as stages (R3 on Q/K after RoPE, R4 on the
    down_proj input, and with ``head_mixing`` QuaRot's Hadamard on the o_proj input).

    Activation/KV quantizer stages added before are fine (stages run rotations first
    whatever the call order); quantized weights are not: rotate first, then quantize.

    Args:
        model: a transformers causal LM (mutated in place).
        config: a :class:`~rotaquant.config.RotationConfig` (the recipe's ``rotation`` section:
            its ``rotation_config``, ``rotation_mode``, ``seed``, ``rotation_path``,
            ``allow_partial_rotation`` and ``online_rotations`` replace the arguments below), or
            the rotation spec alone: ``"auto"`` (the registry's config for the model's class), a
            built-in config name (``llama``, ``qwen2``, ``qwen3``, ``mistral``,
            ``transformer_universal``), a YAML path, a dict or a RotationSpec.
        mode: override the mode of the fused matrices: one mode (``hadamard``,
            ``base_hadamard``, ``orthogonal``) or ``{name: mode}``; default each matrix's own.
        seed: seed of the random matrices.
        rotation_path: load fused matrices from a file (rotaquant safetensors or SpinQuant's
            ``R1`` / ``model.layers.{i}.self_attn.R2`` torch format) instead of generating them.
        online: insert online rotations.
        head_mixing: also mix heads with an online Hadamard at each per-head-input linear.
        progress: show progress bars.
        check: before anything changes, probe the model (one forward of a few tokens) for
            residual-stream readers and writers the config leaves unrotated or unfolded
            (:mod:`rotaquant.rotation.structure`); False skips it (e.g. a forward that needs
            more than ``input_ids``).
        verify: compare the logits of a few random tokens before and after (tolerance by
            dtype: 1e-6 relative in float64, 1e-3 in float32, 1e-1 in half precision).

    Raises:
        AlreadyRotatedError, AlreadyQuantizedError: see above (model unchanged).
        RotationStructureError: the config misses a reader/writer of the residual stream or a
            norm; it lists them with the config keys to add. Raised before any change: the
            model is untouched.
        FunctionChangedError: ``verify`` found changed logits. Raised after rotating: the model
            IS changed (its record says ``verified=failed``, so it cannot be rotated again);
            discard it.
    """
    if isinstance(config, RotationConfig):
        if not config.rotate:
            raise ConfigError("this RotationConfig says rotate: false; there is nothing for rotate() to do")
        if config.rotation_path is not None:
            rotation_path = RotationFile(config.rotation_path, config.allow_partial_rotation)
        config, mode, seed, online = config.rotation_config, config.rotation_mode, config.seed, config.online_rotations
    if rotation_record(model) is not None:
        raise AlreadyRotatedError("this model is already rotated; load a fresh copy to rotate it again")
    quantized = _weights_quantized(model)
    if quantized:
        raise AlreadyQuantizedError(
            f"the weights of {len(quantized)} modules (e.g. {quantized[0]}) are already quantized; rotating "
            "them would move them off their grid. Rotate first, then quantize."
        )
    spec = resolve_spec(model, config)
    if not online:
        spec = spec.without_online()
    elif head_mixing:
        spec = spec.with_head_mixing()
    store = RotationStore(spec, model.config, seed=seed, mode=mode)
    if rotation_path is not None:
        store.load(rotation_path)
    if check:
        origin = f"rotation config {config!r}" if isinstance(config, str) else "the rotation config"
        require_rotation_structure(model, spec, origin)  # before any change: a refusal leaves it untouched
    if verify:
        ids = probe_ids(model)
        reference = probe_logits(model, ids)
    state = RotationState(spec, store, online)
    state.untied = untie_embeddings(model)
    if spec.norm_fuse_config is not None:
        state.folded_norms = fuse_norms(model, spec.norm_fuse_config, spec.layers_pattern,
                                        spec.strict_patterns, spec.use_float64, spec.architecture.norm_kind)
    state.fused_modules = apply_fused_rotations(model, spec, store, progress)
    if online:
        state.online_stages = apply_online_rotations(model, spec, store)
    summary = {
        "mode": mode if mode is not None else "spec", "seed": seed, "online": online,
        "head_mixing": bool(online and head_mixing), "rotation_path": str(rotation_path) if rotation_path else None,
    }
    if verify:
        err, tol = relative_change(probe_logits(model, ids), reference), verify_tolerance(model)
        summary["verified"] = "ok" if err <= tol else "failed"
        if err > tol:
            model.add_module(RECORD_CHILD, RotationRecord(summary))
            raise FunctionChangedError(
                f"rotating {type(model).__name__} changed its logits by {err:.2e} (relative, > {tol:.0e} for "
                f"{next(model.parameters()).dtype}); the model is now rotated and wrong: discard it and load a fresh "
                "copy. The config misses something the structural check cannot see (an R2 pair, a non-invariant "
                "parameter-free op on the residual stream); check rotation_config and norm_fuse_config")
    model.add_module(RECORD_CHILD, RotationRecord(summary))
    logger.info("rotated %s: %d norms folded, %d modules rotated, %d online rotations",
                type(model).__name__, state.folded_norms, state.fused_modules, state.online_stages)
    return state

"""A model whose fused rotations (R1, R2 per layer) are trainable parameters.

:func:`make_trainable` prepares a fresh (unrotated) transformers model for rotation learning:
embeddings untied, norms folded, online R3/R4 inserted (fixed), and every module that the
rotation config names gets a ``torch.nn.utils.parametrize`` parametrization that computes its
rotated weight from the frozen original and the current matrices, then fake-quantizes it with
a straight-through gradient. Activations and the KV cache get STE fake quantizers. The model's
own parameters are frozen; only the matrices of :class:`LearnableRotations` train.

The rotated weight is computed in float32 outside autocast (it is the fused transform), so
only the layer computations run in the autocast dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..models.architecture import decoder_layers
from ..quant.activations import STAGE as ACT_STAGE
from ..quant.activations import add_activation_quantizers
from ..quant.kv import STAGES as KV_STAGES
from ..quant.kv import add_kv_quantizers
from ..quant.pipeline import check_group_sizes
from ..quant.quantizer import QuantSpec, ste_quantizer
from ..rotation.apply import left_t_blocks, match_modules, right_blocks
from ..rotation.fuse import fuse_norms, untie_embeddings
from ..rotation.matrices import RotationStore
from ..rotation.online import apply_online_rotations
from ..rotation.spec import RotationSpec, pattern_matches
from ..stages import remove_stages

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (matrix name, group), as in RotationStore


def store_key(key: Key) -> str:
    """``name`` or ``name@group``: the key of a matrix in a rotaquant rotation file."""
    return key[0] if not key[1] else f"{key[0]}@{key[1]}"


class LearnableRotations(nn.Module):
    """The trainable matrices, one parameter per (name, group); float32 by default."""

    def __init__(self, initial: dict[Key, torch.Tensor], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.keys: list[Key] = list(initial)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.matrices = nn.ParameterList([nn.Parameter(initial[k].to(dtype).clone()) for k in self.keys])

    def get(self, key: Key) -> torch.Tensor:
        return self.matrices[self.index[key]]

    def state(self, masters: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``name@group`` -> float64 matrix (the optimizer's float64 masters where given)."""
        out = {}
        for i, key in enumerate(self.keys):
            mat = masters.get(i) if masters else None
            out[store_key(key)] = (mat if mat is not None else self.matrices[i]).detach().to("cpu", torch.float64).contiguous()
        return out


class _Ref:
    """A plain reference, so the rotations are not registered as a submodule of every layer."""

    def __init__(self, rotations: LearnableRotations):
        self.rotations = rotations


class RotatedWeight(nn.Module):
    """Parametrization ``W -> fq(W R_in)`` / ``fq(R_out^T W R_in)`` (embeddings: ``E R``)."""

    def __init__(self, ref: _Ref, r_in: Key | None, r_out: Key | None, embedding: bool, spec: QuantSpec | None,
                 ste: str = "identity"):
        super().__init__()
        self.ref, self.r_in, self.r_out, self.embedding = ref, r_in, r_out, embedding
        self.spec = spec if spec is not None and spec.enabled else None
        self.fq = ste_quantizer(ste)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rot = self.ref.rotations
        with torch.autocast(device_type=w.device.type, enabled=False):
            mat = w.float()
            if self.r_in is not None:
                mat = right_blocks(mat, rot.get(self.r_in).float())
            if self.r_out is not None:
                r = rot.get(self.r_out).float()
                mat = right_blocks(mat, r) if self.embedding else left_t_blocks(mat, r)
            if self.spec is not None:
                mat = self.fq(mat, self.spec)
            return mat.to(w.dtype)


class RotatedBias(nn.Module):
    """Parametrization ``b -> R_out^T b`` of the bias of an output-rotated linear."""

    def __init__(self, ref: _Ref, r_out: Key):
        super().__init__()
        self.ref, self.r_out = ref, r_out

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=b.device.type, enabled=False):
            return right_blocks(b.float(), self.ref.rotations.get(self.r_out).float()).to(b.dtype)


@dataclass
class TrainableModel:
    """The prepared model, its trainable rotations and what was inserted."""

    model: nn.Module
    rotations: LearnableRotations
    store: RotationStore
    online_stages: int = 0
    parametrized: list = field(default_factory=list)
    layers: nn.ModuleList | None = None  # the decoder layers (the FSDP units of sharded learning)

    def remove(self) -> None:
        """Take the parametrizations and fake quantizer stages out again. The model keeps its
        folded norms and online R3/R4, so it computes the original function with unrotated R1/R2."""
        for module, attr in self.parametrized:
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        remove_stages(self.model, [ACT_STAGE, *KV_STAGES])
        self.parametrized = []


def _fused_names(spec: RotationSpec) -> set[str]:
    return {n for n, m in spec.rotation_matrices.items() if not m.online}


def make_trainable(model: nn.Module, spec: RotationSpec, store: RotationStore, settings,
                   online: bool = True, ste: str = "identity") -> TrainableModel:
    """Prepare ``model`` (mutated IN PLACE) for learning the fused rotations of ``spec``.

    Args:
        model: a fresh transformers causal LM (not rotated before).
        spec: the rotation config (fused matrices become trainable, online ones stay fixed).
        store: initial matrices (random Hadamard by default, or loaded from a file).
        settings: a :class:`~rotaquant.quant.recipe.QuantSettings` (bits of W/A/K/V).
        online: insert the online R3/R4 of the config.
        ste: gradient of the fake quantizers: ``"identity"`` (straight through, SpinQuant's) or
            ``"scale"`` (also through the dynamic scales).
    """
    arch = spec.architecture
    if settings.o_proj_input == "mixed":
        raise ConfigError("rotation learning does not support o_proj_input 'mixed' (an online head-mixing "
                          "Hadamard); learn with 'per_head' or 'per_token'")
    check_group_sizes(model, settings, arch)
    for p in model.parameters():
        p.requires_grad_(False)
    untie_embeddings(model)
    if spec.norm_fuse_config is not None:
        fuse_norms(model, spec.norm_fuse_config, spec.layers_pattern, spec.strict_patterns, spec.use_float64,
                   arch.norm_kind)
    n_online = apply_online_rotations(model, spec, store) if online else 0
    fused = _fused_names(spec)
    hits = [h for h in match_modules(model, spec.rotation_config, spec.strict_patterns, "rotation_config")
            if isinstance(getattr(h[1], "weight", None), torch.Tensor)]
    plan, initial = [], {}
    for name, module, pattern in hits:
        keys = []
        for rname in spec.rotation_config[pattern]:
            if rname is None or rname not in fused:
                keys.append(None)
                continue
            key = (rname, store.group_of(rname, name))
            initial.setdefault(key, store.get(rname, name))
            keys.append(key)
        plan.append((name, module, keys))
    if not initial:
        raise ConfigError("the rotation config has no fused matrix to learn (rotation_config names none)")
    rotations = LearnableRotations(initial)
    ref = _Ref(rotations)
    wspec = settings.weight_spec
    state = TrainableModel(model, rotations, store, online_stages=n_online, layers=decoder_layers(model, arch)[1])
    for name, module, (r_in, r_out) in plan:
        is_emb = isinstance(module, nn.Embedding)
        quant = isinstance(module, nn.Linear) and not any(pattern_matches(p, name) for p in settings.skip_modules)
        parametrize.register_parametrization(
            module, "weight", RotatedWeight(ref, r_in, r_out, is_emb, wspec if quant else None, ste), unsafe=True)
        state.parametrized.append((module, "weight"))
        if r_out is not None and not is_emb and getattr(module, "bias", None) is not None:
            parametrize.register_parametrization(module, "bias", RotatedBias(ref, r_out), unsafe=True)
            state.parametrized.append((module, "bias"))
    add_activation_quantizers(model, settings.act_spec, arch, settings.skip_modules,
                              per_head=settings.o_proj_input == "per_head", ste=ste)
    add_kv_quantizers(model, settings.key_spec, settings.value_spec, arch, ste=ste)
    logger.info("learning %d matrices (%s) through %d parametrized modules",
                len(rotations.keys), ", ".join(sorted({k[0] for k in rotations.keys})), len(plan))
    return state

"""Where things are in a decoder-only model: declared as data, never guessed from names.

An :class:`ArchitectureSpec` is the ``architecture:`` section of a rotation config (YAML). Names
are dotted module paths: ``layers`` from the model root, the others relative to one decoder
layer (attention projections relative to the attention module). A config without the section
(e.g. one of NVIDIA ModelOpt's files, taken verbatim) gets the Llama-style defaults below.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from ..config import StrictModel
from ..errors import ConfigError

NormKind = Literal["rms", "rms_offset", "layernorm"]


class ArchitectureError(ConfigError):
    """The model does not have a module the architecture spec names."""


class ArchitectureSpec(StrictModel):
    """The sites rotaquant acts on, for one model family.

    Attributes:
        layers: path of the decoder-layer ``ModuleList`` from the model root.
        attention: attention module, relative to a decoder layer.
        q_proj, k_proj, v_proj, o_proj: projections, relative to the attention module.
        mlp_in: linears reading the MLP input (relative to a layer); ``mlp_out``: the MLP's
            output linear (its input is the intermediate activation, R4's site).
        head_dim: config key (or int) of the per-head size.
        norm_kind: how the norms compute: ``rms`` (``x / rms(x) * w``, folds ``w``),
            ``rms_offset`` (Gemma's ``x / rms(x) * (1 + w)``, folds ``1 + w``) or
            ``layernorm`` (mean subtraction and bias: refused by rotation).
        gptq_groups: linears (relative to a layer) quantized together; each group's Hessians
            are collected after the previous groups of the same layer are quantized.
        per_head_inputs: linears whose input is laid out per attention head (``o_proj``), where
            activations can be quantized per head or mixed across heads first.
        lm_head: path of the output head from the model root.
    """

    layers: str = "model.layers"
    attention: str = "self_attn"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    mlp_in: list[str] = Field(default_factory=lambda: ["mlp.gate_proj", "mlp.up_proj"])
    mlp_out: str = "mlp.down_proj"
    head_dim: int | str = "head_dim"
    norm_kind: NormKind = "rms"
    gptq_groups: list[list[str]] = Field(default_factory=lambda: [
        ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
        ["self_attn.o_proj"],
        ["mlp.up_proj", "mlp.gate_proj"],
        ["mlp.down_proj"],
    ])
    per_head_inputs: list[str] = Field(default_factory=lambda: ["self_attn.o_proj"])
    lm_head: str = "lm_head"


def _get(root: nn.Module, path: str, what: str, owner: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise ArchitectureError(
            f"{owner} has no module {path!r} (the architecture spec's {what}); fix the "
            "`architecture:` section of the rotation config for this model"
        ) from None


def decoder_layers(model: nn.Module, arch: ArchitectureSpec) -> tuple[str, nn.ModuleList]:
    """``(path, ModuleList)`` of the decoder layers."""
    layers = _get(model, arch.layers, "layers", type(model).__name__)
    if not isinstance(layers, nn.ModuleList):
        raise ArchitectureError(f"{arch.layers} of {type(model).__name__} is a {type(layers).__name__}, not a ModuleList")
    return arch.layers, layers


def input_groups(model: nn.Module, arch: ArchitectureSpec) -> list[list[str]]:
    """Full names of each decoder layer's linears that read one input (the spec's GPTQ groups:
    q/k/v, gate/up); names the model lacks are left out."""
    prefix, layers = decoder_layers(model, arch)
    names = {n for n, _ in model.named_modules()}
    return [[f"{prefix}.{i}.{n}" for n in group if f"{prefix}.{i}.{n}" in names]
            for i in range(len(layers)) for group in arch.gptq_groups]


def attention_modules(model: nn.Module, arch: ArchitectureSpec) -> list[tuple[str, nn.Module]]:
    """``(full name, attention module)`` of every decoder layer that has one.

    A layer has attention when it has a module at ``attention`` with a ``q_proj`` child: a
    Mamba layer of a hybrid has none (Bamba), or has a mixer at the same path (NemotronH's
    ``mixer`` is attention, Mamba2 or an MLP depending on the layer)."""
    prefix, layers = decoder_layers(model, arch)
    out = []
    for i, layer in enumerate(layers):
        try:
            module = layer.get_submodule(arch.attention)
            module.get_submodule(arch.q_proj)
        except AttributeError:
            continue  # a layer without attention (e.g. a Mamba layer of a hybrid)
        out.append((f"{prefix}.{i}.{arch.attention}", module))
    return out


def layer_linear(layer: nn.Module, path: str, owner: str) -> nn.Module | None:
    """The linear at ``path`` of ``layer``, or None where this layer has none."""
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def per_head_input_linears(model: nn.Module, arch: ArchitectureSpec) -> list[tuple[str, nn.Module]]:
    """``(full name, linear)`` of each linear whose input is laid out per head."""
    prefix, layers = decoder_layers(model, arch)
    out = []
    for i, layer in enumerate(layers):
        for path in arch.per_head_inputs:
            lin = layer_linear(layer, path, f"{prefix}.{i}")
            if lin is not None:
                out.append((f"{prefix}.{i}.{path}", lin))
    return out

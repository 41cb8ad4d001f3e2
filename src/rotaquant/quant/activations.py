"""Activation quantization: a per-token dynamic quantizer stage at the input of each linear.

Which linears: every linear inside the decoder layers that no ``skip`` pattern names (the
layers come from the architecture spec; the head is outside them). The quantizer is a stage
(``a_quant``) at the linear's input site, so it always runs after a rotation stage there
(R4 on ``down_proj``, head mixing on ``o_proj``), whatever the call order. At the linears whose
input is laid out per head (``per_head_inputs`` of the spec, ``o_proj``), ``per_head=True``
gives one scale per token and head, as SpinQuant does.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from ..errors import ConfigError
from ..models.architecture import (
    ArchitectureSpec,
    decoder_layers,
    input_groups,
    per_head_input_linears,
)
from ..rotation.matrices import config_dim
from ..stages import add_input_stage
from .layerwise import selected_linears
from .quantizer import ActQuantizer, QuantSpec, share_result

logger = logging.getLogger(__name__)
STAGE = "a_quant"


def layer_linears(model: nn.Module, arch: ArchitectureSpec, skip: list[str]) -> list[tuple[str, nn.Linear]]:
    """The linears of the decoder layers whose full names match none of the ``skip`` globs."""
    prefix, layers = decoder_layers(model, arch)
    return [(f"{prefix}.{i}.{name}", module) for i, layer in enumerate(layers)
            for name, module in selected_linears(layer, f"{prefix}.{i}", skip).items()]


def head_spec(spec: QuantSpec, head_dim: int) -> QuantSpec:
    """``spec`` with one scale per head (``group_size = head_dim``) unless it is finer already."""
    if spec.group_size is not None and head_dim % spec.group_size == 0:
        return spec
    return dataclasses.replace(spec, group_size=head_dim)


def add_activation_quantizers(model: nn.Module, spec: QuantSpec, arch: ArchitectureSpec, skip: list[str],
                              per_head: bool = False, ste: bool | str = False) -> int:
    """Add an ``a_quant`` stage with ``spec`` at each selected linear's input; returns how many.

    Mutates ``model``. ``skip`` holds glob patterns of linears left unquantized. With
    ``per_head``, the per-head-input linears get one scale per head. With ``ste`` the quantizer
    passes gradients straight through (rotation learning).
    """
    if not spec.enabled:
        return 0
    heads = {name for name, _ in per_head_input_linears(model, arch)} if per_head else set()
    head_dim = config_dim(model.config, arch.head_dim) if heads else None
    quantizers = {}
    for name, module in layer_linears(model, arch, skip):
        s = head_spec(spec, head_dim) if name in heads else spec
        if s.group_size is not None and module.in_features % s.group_size:
            raise ConfigError(f"{name}: a_groupsize {s.group_size} does not divide its input size {module.in_features}")
        quantizers[name] = ActQuantizer(s, ste=ste)
        add_input_stage(module, STAGE, quantizers[name], replace=True)
    share_group_inputs(model, arch, quantizers)
    logger.info("activation quantizers on %d linears (%s%s)", len(quantizers), spec,
                ", per head at o_proj" if heads else "")
    return len(quantizers)


def share_group_inputs(model: nn.Module, arch: ArchitectureSpec, quantizers: dict[str, ActQuantizer]) -> int:
    """Let the quantizers of each layer's linears that read one input (:func:`input_groups`:
    q/k/v, gate/up) with one spec compute it once (:class:`SharedResult`; checked per call by
    tensor identity, so a group whose inputs differ still quantizes each). Returns how many
    groups share."""
    shared = 0
    for names in input_groups(model, arch):
        members = [quantizers[n] for n in names if n in quantizers]
        shared += share_result(members, [q.spec for q in members], "shared")
    return shared

"""KV-cache quantization inside attention (keys after R3, values), per head or per group.

The quantizers are stages (``k_quant``, ``v_quant``) at the key and value sites of each
attention module of the architecture spec; a rotation stage there (R3) always runs first, so
keys are quantized in the rotated basis as a deployed cache would hold them. Keys and values
arrive as ``[batch, kv_heads, seq, head_dim]``: per-head quantization is one scale per
(token, head) over ``head_dim``; ``group_size`` splits ``head_dim`` into groups.
"""

from __future__ import annotations

import logging

from torch import nn

from ..errors import ConfigError
from ..models.architecture import ArchitectureSpec, attention_modules
from ..rotation.matrices import config_dim
from ..stages import add_attention_stage
from .quantizer import ActQuantizer, QuantSpec

logger = logging.getLogger(__name__)
STAGES = ("k_quant", "v_quant")


def add_kv_quantizers(model: nn.Module, key_spec: QuantSpec, value_spec: QuantSpec, arch: ArchitectureSpec,
                      ste: bool | str = False) -> int:
    """Quantize keys and values in every attention module; returns how many got quantizers
    (0, with a warning, for a model without attention such as Mamba2).

    Mutates ``model`` (stages on its attention modules; attention routed through rotaquant's
    function for the model's base implementation).
    """
    if not (key_spec.enabled or value_spec.enabled):
        return 0
    head_dim = config_dim(model.config, arch.head_dim)
    for what, spec in (("k", key_spec), ("v", value_spec)):
        if spec.enabled and spec.group_size is not None and head_dim % spec.group_size:
            raise ConfigError(f"{what}_groupsize {spec.group_size} does not divide head_dim {head_dim}")
    modules = attention_modules(model, arch)
    if not modules:
        # a pure state-space model (Mamba2) has no KV cache; its SSM state is not quantized
        logger.warning("%s has no attention module (%s.N.%s): KV-cache quantization does not apply, skipped",
                       type(model).__name__, arch.layers, arch.attention)
        return 0
    for _, module in modules:
        dev = next(module.parameters()).device
        if key_spec.enabled:
            add_attention_stage(model, module, "key", STAGES[0], ActQuantizer(key_spec, ste=ste).to(dev), replace=True)
        if value_spec.enabled:
            add_attention_stage(model, module, "value", STAGES[1], ActQuantizer(value_spec, ste=ste).to(dev), replace=True)
    logger.info("KV quantizers on %d attention modules (K %s, V %s)", len(modules), key_spec, value_spec)
    return len(modules)

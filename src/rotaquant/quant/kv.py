"""KV-cache quantization inside attention (keys after R3, values), per head or per group.

The quantizers attach to each attention module through :mod:`rotaquant.attention`, after any
R3 rotation, so keys are quantized in the rotated basis as a deployed cache would hold them.
Keys and values arrive as ``[batch, kv_heads, seq, head_dim]``: per-head quantization is one
scale per (token, head) over ``head_dim``; ``group_size`` splits ``head_dim`` into groups.
"""

from __future__ import annotations

import logging

from torch import nn

from .. import attention
from ..errors import ConfigError
from ..rotation.matrices import config_dim
from .quantizer import ActQuantizer, QuantSpec

logger = logging.getLogger(__name__)
TAG = "rotaquant.kv"


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Attention modules: those with ``q_proj`` and ``k_proj`` children."""
    return [(n, m) for n, m in model.named_modules()
            if all(hasattr(m, c) for c in ("q_proj", "k_proj")) and not isinstance(m, nn.Linear)]


def add_kv_quantizers(model: nn.Module, key_spec: QuantSpec, value_spec: QuantSpec, ste: bool | str = False) -> int:
    """Quantize keys and values in every attention module; returns how many got quantizers.

    Mutates ``model`` (its attention implementation routes through rotaquant's).
    """
    if not (key_spec.enabled or value_spec.enabled):
        return 0
    head_dim = config_dim(model.config, "head_dim")
    for what, spec in (("k", key_spec), ("v", value_spec)):
        if spec.enabled and spec.group_size is not None and head_dim % spec.group_size:
            raise ConfigError(f"{what}_groupsize {spec.group_size} does not divide head_dim {head_dim}")
    kq = ActQuantizer(key_spec, ste=ste) if key_spec.enabled else None
    vq = ActQuantizer(value_spec, ste=ste) if value_spec.enabled else None
    modules = attention_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no attention module with q_proj/k_proj to quantize K/V in")
    for _, module in modules:
        attention.attach(model, module, TAG, key=kq, value=vq)
    logger.info("KV quantizers on %d attention modules (K %s, V %s)", len(modules), key_spec, value_spec)
    return len(modules)

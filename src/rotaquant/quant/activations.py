"""Activation quantization: every selected linear's input, per token, dynamic.

Forward pre-hooks run in registration order, so when the model was rotated first the
quantizer sees the input after the online R4 rotation, which is what a deployed kernel sees.
"""

from __future__ import annotations

import logging

from torch import nn

from ..rotation.spec import pattern_matches
from .quantizer import ActQuantizer, QuantSpec

logger = logging.getLogger(__name__)


def linear_modules(model: nn.Module, skip: list[str]) -> list[tuple[str, nn.Linear]]:
    """The model's linears whose names match none of the ``skip`` glob patterns."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(pattern_matches(p, n) for p in skip)]


def add_activation_quantizers(model: nn.Module, spec: QuantSpec, skip: list[str],
                              ste: bool | str = False) -> list:
    """Quantize each selected linear's input with ``spec``; returns the hook handles.

    Mutates ``model`` (forward pre-hooks). ``skip`` holds glob patterns of linears left in full
    precision (``*lm_head`` by default). With ``ste`` the quantizer passes gradients straight
    through (for rotation learning).
    """
    if not spec.enabled:
        return []
    quantizer = ActQuantizer(spec, ste=ste)
    handles = []
    for name, module in linear_modules(model, skip):
        if spec.group_size is not None and module.in_features % spec.group_size:
            from ..errors import ConfigError

            raise ConfigError(f"{name}: a_groupsize {spec.group_size} does not divide its input size {module.in_features}")
        handles.append(module.register_forward_pre_hook(_hook(quantizer)))
    logger.info("activation quantizers on %d linears (%s)", len(handles), spec)
    return handles


def _hook(quantizer: ActQuantizer):
    def hook(module, args):
        return (quantizer(args[0]), *args[1:])

    return hook

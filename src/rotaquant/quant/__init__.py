"""Quantization: fake quantizers, RTN, GPTQ, activation and KV-cache quantization, the PTQ pipeline."""

from .gptq import GPTQConfig, HessianAccumulator, NonFiniteActivationError, gptq_quantize_weight
from .quantizer import ActQuantizer, QuantSpec, fake_quantize, fake_quantize_ste
from .rtn import rtn_quantize_weight

__all__ = [
    "ActQuantizer",
    "GPTQConfig",
    "HessianAccumulator",
    "NonFiniteActivationError",
    "QuantSpec",
    "fake_quantize",
    "fake_quantize_ste",
    "gptq_quantize_weight",
    "rtn_quantize_weight",
]

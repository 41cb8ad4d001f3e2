"""Quantization: fake quantizers, RTN, GPTQ, activation and KV-cache quantization, the PTQ pipeline.

The building blocks re-exported here share one grid definition
(:mod:`rotaquant.quant.quantizer`): symmetric codes in ``[-2^(b-1), 2^(b-1) - 1]`` with
``scale = clip * max|x| / (2^(b-1) - 1)`` (``sym_grid`` restricted) or ``/ ((2^b - 1) / 2)``
(full, compressed-tensors'), asymmetric codes in ``[0, 2^b - 1]`` with an integer
zero point, per row of the last dim or per group of ``group_size`` elements of it.
"""

from .gptq import (
    GPTQConfig,
    GPTQError,
    HessianAccumulator,
    NonFiniteActivationError,
    gptq_quantize_weight,
    quantization_objective,
)
from .quantizer import (
    ActQuantizer,
    QuantSpec,
    dequantize,
    fake_quantize,
    fake_quantize_ste,
    quant_params,
    quantize_to_int,
    to_groups,
)
from .rtn import rtn_quantize_weight, search_clip_params, weight_quant_params

__all__ = [
    "ActQuantizer",
    "GPTQConfig",
    "GPTQError",
    "HessianAccumulator",
    "NonFiniteActivationError",
    "QuantSpec",
    "dequantize",
    "fake_quantize",
    "fake_quantize_ste",
    "gptq_quantize_weight",
    "quant_params",
    "quantization_objective",
    "quantize_to_int",
    "rtn_quantize_weight",
    "search_clip_params",
    "to_groups",
    "weight_quant_params",
]

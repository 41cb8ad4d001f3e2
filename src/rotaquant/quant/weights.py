"""The integer form of a quantized weight, kept on its linear for export.

RTN and GPTQ write the dequantized weight into ``linear.weight`` (what the fake-quantized model
computes with) and attach a :class:`QuantizedWeight` child named ``rq_weight`` holding the
integer codes (int8 for symmetric grids, uint8 for asymmetric ones: 8-bit asymmetric codes
reach 255; float8_e4m3fn for FP8 specs), scales and zero points, so that ``(codes - zero) * scale`` equals the
weight and an exporter can pack them. Being a child module it is in ``state_dict`` and survives
``deepcopy``; it does not run in the forward pass.

Codes of 4 bits or fewer are kept two per byte (buffer ``packed_codes``, :mod:`.nibbles`), the
others as they are (buffer ``int_codes``); ``codes`` gives them unpacked either way. Packing
halves what the records cost: a fake-quantized LLaMA-7B keeps 3.2 GB of codes instead of 6.5 GB
next to its 13.5 GB of fp16 weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .nibbles import pack_nibbles, unpack_nibbles
from .quantizer import QuantSpec, quantize_to_int, to_groups

WEIGHT_CHILD = "rq_weight"


class QuantizedWeight(nn.Module):
    """Codes ``[out, in]`` (int8 symmetric / uint8 asymmetric / float8_e4m3fn FP8; two per byte
    at <= 4 bits), ``scale`` and ``zero`` ``[out, G]`` (float32) of a weight."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec,
                 method: str):
        super().__init__()
        self.spec, self.method, self.shape = spec, method, tuple(codes.shape)
        dtype = torch.float8_e4m3fn if spec.type == "float" else torch.int8 if spec.symmetric else torch.uint8
        if spec.type == "int" and spec.bits <= 4 and codes.dim() == 2 and codes.shape[1] % 2 == 0:
            self.register_buffer("packed_codes", pack_nibbles(codes))
        else:
            self.register_buffer("int_codes", codes.to(dtype))
        self.register_buffer("scale", scale.to(torch.float32))
        self.register_buffer("zero", zero.to(torch.float32))

    @property
    def codes(self) -> torch.Tensor:
        """The codes unpacked, ``[out, in]`` (a new tensor when they are stored packed)."""
        packed = self._buffers.get("packed_codes")
        if packed is None:
            return self.int_codes
        return unpack_nibbles(packed, signed=self.spec.symmetric).to(torch.int8 if self.spec.symmetric else torch.uint8)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """``(codes - zero) * scale`` in ``dtype``, shaped like the weight."""
        g = to_groups(self.codes.to(torch.float32), self.spec)
        return ((g - self.zero[..., None]) * self.scale[..., None]).reshape(self.shape).to(dtype)

    def extra_repr(self) -> str:
        packed = ", two codes per byte" if "packed_codes" in self._buffers else ""
        return f"{self.method}, {self.spec}, shape={self.shape}{packed}"


def attach_quantized_weight(linear: nn.Module, spec: QuantSpec, scale: torch.Tensor, zero: torch.Tensor,
                            method: str) -> QuantizedWeight:
    """Record the codes of ``linear.weight`` (already on the grid of ``scale``/``zero``, shaped
    ``[out, G, 1]``) as its ``rq_weight`` child. Mutates ``linear``."""
    w = linear.weight.detach()
    codes = quantize_to_int(to_groups(w.to(scale.dtype), spec), scale, zero, spec).reshape(w.shape)
    record = QuantizedWeight(codes, scale[..., 0], zero[..., 0], spec, method)
    linear.add_module(WEIGHT_CHILD, record.to(w.device))
    return record

"""The codes a quantized linear keeps for export: exact, two per byte at <= 4 bits, in
state_dict and deepcopy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rotaquant.quant.nibbles import pack_nibbles, unpack_nibbles
from rotaquant.quant.quantizer import (
    QuantSpec,
    fake_quantize,
    quant_params,
    quantize_to_int,
    to_groups,
)
from rotaquant.quant.weights import QuantizedWeight, attach_quantized_weight


def _quantized_linear(spec: QuantSpec, out_f=6, in_f=16, seed=0):
    lin = nn.Linear(in_f, out_f, bias=False)
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))
    scale, zero = quant_params(w, spec)
    want = quantize_to_int(to_groups(w, spec), scale, zero, spec).reshape(out_f, in_f)
    with torch.no_grad():
        lin.weight.copy_(fake_quantize(w, spec))
    return lin, attach_quantized_weight(lin, spec, scale, zero, "rtn"), want


def test_nibbles_round_trip_signed_and_unsigned():
    signed = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)
    assert torch.equal(unpack_nibbles(pack_nibbles(signed), signed=True), signed)
    unsigned = torch.arange(0, 16, dtype=torch.int8).repeat(2, 1)
    packed = pack_nibbles(unsigned)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 8)
    assert torch.equal(unpack_nibbles(packed, signed=False), unsigned)


@pytest.mark.parametrize("spec", [QuantSpec(bits=4), QuantSpec(bits=4, symmetric=False, group_size=8),
                                  QuantSpec(bits=3, symmetric=False), QuantSpec(bits=2, group_size=8)],
                         ids=["int4-sym", "int4-asym-g8", "int3-asym", "int2-sym-g8"])
def test_low_bit_codes_are_packed_and_exact(spec):
    lin, rec, want = _quantized_linear(spec)
    assert set(rec.state_dict()) == {"packed_codes", "scale", "zero"}
    assert rec.packed_codes.shape == (6, 8) and rec.packed_codes.dtype == torch.uint8
    assert rec.codes.dtype == (torch.int8 if spec.symmetric else torch.uint8)
    assert torch.equal(rec.codes.to(torch.int32), want.to(torch.int32))
    assert torch.equal(rec.dequantize(), lin.weight)  # (codes - zero) * scale is the fake-quantized weight
    clone = copy.deepcopy(lin)
    assert torch.equal(clone.rq_weight.codes, rec.codes) and "two codes per byte" in repr(clone.rq_weight)
    fresh = QuantizedWeight(torch.zeros(6, 16), torch.ones_like(rec.scale), torch.zeros_like(rec.zero), spec, "rtn")
    fresh.load_state_dict(rec.state_dict())
    assert torch.equal(fresh.dequantize(), lin.weight)


@pytest.mark.parametrize("spec,in_f", [(QuantSpec(bits=8), 16), (QuantSpec(bits=8, symmetric=False), 16),
                                       (QuantSpec(bits=4), 15)], ids=["int8-sym", "int8-asym", "int4-odd-width"])
def test_other_codes_are_kept_as_they_are(spec, in_f):
    lin, rec, want = _quantized_linear(spec, in_f=in_f)
    assert "int_codes" in rec.state_dict() and "packed_codes" not in rec.state_dict()
    assert rec.codes.shape == (6, in_f)
    assert torch.equal(rec.codes.to(torch.int32), want.to(torch.int32) % 256 if not spec.symmetric else want.to(torch.int32))
    assert torch.equal(rec.dequantize(), lin.weight)

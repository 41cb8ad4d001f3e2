"""W4A16 Triton kernels (:mod:`rotaquant.kernels.w4a16_gemv`) against QuantLinear's reference:
the dequantization pass is bit-identical, the few-row matmul equal up to accumulation order.
Run on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``)."""

import pytest
import torch

from rotaquant.kernels import w4a16_gemv
from rotaquant.quant.quantizer import QuantSpec
from tests.quant.test_qlinear import make_layer

from .triton_env import DEVICE, INTERPRET, ON_GPU, TRITON_MARKS

pytestmark = TRITON_MARKS

SPECS = {
    "sym g32": QuantSpec(bits=4, group_size=32),
    "asym g64": QuantSpec(bits=4, symmetric=False, group_size=64),
    "sym g128": QuantSpec(bits=4, group_size=128),
    "asym per-channel": QuantSpec(bits=4, symmetric=False),
    "int3 g64": QuantSpec(bits=3, group_size=64),
}


def _layer(out_f, in_f, spec, seed=0):
    layer, _ = make_layer(out_f, in_f, spec, seed=seed)
    ops = w4a16_gemv.pack_w4(layer.int_codes(), layer.scale, layer.zero)
    return layer, {k: v.to(DEVICE) for k, v in ops.items()}


@pytest.mark.parametrize("in_f", [576, 1024])
@pytest.mark.parametrize("name", list(SPECS))
# bfloat16 only on the GPU: the interpreter rounds float32 -> bfloat16 toward zero, the GPU to nearest even
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32] + ([torch.bfloat16] if ON_GPU else []), ids=str)
def test_dequantize_is_bit_identical(name, in_f, dtype):
    spec = SPECS[name]
    if in_f % (spec.group_size or 1):
        pytest.skip("groups must divide the input size")
    layer, ops = _layer(40, in_f, spec)
    got = w4a16_gemv.w4_dequantize(ops, spec.group_size, dtype)
    assert got.dtype == dtype and got.shape == (40, in_f)
    assert torch.equal(got.cpu(), layer.dequantize(dtype))


def test_k_tiles_cover_smollm2_shapes():
    assert w4a16_gemv.block_k_for(576, 64) == 64  # SmolLM2 hidden 576 in groups of 64
    assert w4a16_gemv.block_k_for(576, None) == 64
    assert w4a16_gemv.block_k_for(1536, 128) == 512
    assert w4a16_gemv.block_k_for(576, 128) is None  # 576 is 4.5 groups of 128


@pytest.mark.parametrize("rows", [1, 7, 16])
@pytest.mark.parametrize("name", ["asym g64", "sym g128", "asym per-channel"])
@pytest.mark.skipif(INTERPRET, reason="the autotuner needs a GPU driver; the interpreter (Triton 3.6) also "
                    "cannot run a loop bounded by a runtime argument")
def test_matmul_matches_reference(name, rows):
    spec = SPECS[name]
    in_f = 576 if name != "sym g128" else 1024
    layer, ops = _layer(48, in_f, spec)
    x = torch.randn(rows, in_f, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    ref = torch.nn.functional.linear(x.float(), layer.dequantize(torch.float16).float())
    got = w4a16_gemv.w4a16_matmul(x.to(DEVICE), ops, spec.group_size).cpu()
    assert got.dtype == torch.float16 and got.shape == (rows, 48)
    assert ((got.float() - ref).abs().max() / ref.abs().max()).item() < 2e-3


"""W4A16 Triton kernels (:mod:`rotaquant.kernels.w4a16_gemv`) against QuantLinear's reference:
the dequantization pass is bit-identical, the few-row split-K matmul equal up to accumulation
order (its weights are the reference's, bit for bit).
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
    ops = w4a16_gemv.pack_w4(layer.int_codes(), layer.scale, layer.zero, spec.group_size)
    return layer, {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in ops.items()}


@pytest.mark.parametrize("in_f", [576, 1024])
@pytest.mark.parametrize("name", list(SPECS))
# bfloat16 only on the GPU: the interpreter rounds float32 -> bfloat16 toward zero, the GPU to nearest even
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32] + ([torch.bfloat16] if ON_GPU else []), ids=str)
def test_dequantize_is_bit_identical(name, in_f, dtype):
    spec = SPECS[name]
    if in_f % (spec.group_size or 1):
        pytest.skip("groups must divide the input size")
    layer, ops = _layer(40, in_f, spec)
    got = w4a16_gemv.w4_dequantize(ops, dtype)
    assert got.dtype == dtype and got.shape == (40, in_f)
    assert torch.equal(got.cpu(), layer.dequantize(dtype))


def test_layout_covers_smollm2_shapes():
    assert w4a16_gemv.half_for(576, 64) == 32  # SmolLM2 hidden 576 in groups of 64 (9 groups)
    assert w4a16_gemv.half_for(576, None) == 32  # per channel: blocks of 64 (576 = 9 x 64)
    assert w4a16_gemv.half_for(1536, 128) == 64
    assert w4a16_gemv.half_for(11008, None) == 128 and w4a16_gemv.half_for(11008, 128) == 64
    assert w4a16_gemv.half_for(576, 128) is None  # 576 is 4.5 groups of 128
    assert w4a16_gemv.half_for(480, 48) is None  # half a group must be a power of two
    with pytest.raises(ValueError, match="no W4 layout"):
        w4a16_gemv.pack_w4(torch.zeros(4, 576, dtype=torch.int8), torch.ones(4, 4), torch.zeros(4, 4), 144)


def test_packed_layout_halves():
    """Byte j of a block of 2H holds element j (low nibble) and element H + j (high nibble)."""
    codes = (torch.arange(2 * 128) % 16 - 8).to(torch.int8).reshape(2, 128)
    ops = w4a16_gemv.pack_w4(codes, torch.ones(2, 2), torch.zeros(2, 2), 64)
    assert ops["half"] == 32 and ops["packed"].shape == (2, 64)
    u = codes.to(torch.int16) + 8
    assert int(ops["packed"][0, 0]) == int(u[0, 0]) | int(u[0, 32]) << 4
    assert int(ops["packed"][1, 33]) == int(u[1, 65]) | int(u[1, 97]) << 4
    assert ops["scale_t"].shape == (2, 2) and ops["zc_t"][0, 0].item() == 8 + w4a16_gemv.MAGIC


CONFIGS = [{"BLOCK_N": 16, "SPLIT_K": 1, "UNROLL": 1}, {"BLOCK_N": 16, "SPLIT_K": 2, "UNROLL": 2},
           {"BLOCK_N": 32, "SPLIT_K": 4, "UNROLL": 1}, {"BLOCK_N": 16, "SPLIT_K": 8, "UNROLL": 2},
           {"BLOCK_N": 16, "SPLIT_K": 32, "UNROLL": 1}]  # the widest split: more programs than K blocks


@pytest.mark.parametrize("rows", [1, 7, 16])
@pytest.mark.parametrize("name", ["asym g64", "sym g128", "asym per-channel", "sym g32"])
@pytest.mark.parametrize("mode", ["dot", "fma", "fast", "tc"])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)), ids=lambda i: "split{SPLIT_K}-unroll{UNROLL}-n{BLOCK_N}".format(**CONFIGS[i]))
def test_matmul_matches_reference(name, rows, mode, cfg):
    """Every split of K (uneven ones too: 9 groups of 64 in 576) gives the reference's values up to
    accumulation order; the tile counters are left at zero for the next call."""
    spec = SPECS[name]
    in_f = 576 if name != "sym g128" else 1024
    layer, ops = _layer(40, in_f, spec)
    x = torch.randn(rows, in_f, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    ref = torch.nn.functional.linear(x.float(), layer.dequantize(torch.float16).float())
    for _ in range(2):  # twice: the counters reset themselves
        got = w4a16_gemv.w4a16_matmul(x.to(DEVICE), ops, mode=mode, config=CONFIGS[cfg]).cpu()
        assert got.dtype == torch.float16 and got.shape == (rows, 40)
        assert ((got.float() - ref).abs().max() / ref.abs().max()).item() < 2e-3
    assert int(ops["counters"].abs().sum()) == 0


@pytest.mark.skipif(INTERPRET, reason="the autotuner needs a GPU driver")
@pytest.mark.parametrize("rows", [1, 16])
def test_autotuned_matmul_matches_reference(rows):
    spec = SPECS["sym g128"]
    layer, ops = _layer(4096, 1024, spec)
    x = torch.randn(rows, 1024, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    ref = torch.nn.functional.linear(x.float(), layer.dequantize(torch.float16).float())
    for _ in range(2):
        got = w4a16_gemv.w4a16_matmul(x.to(DEVICE), ops).cpu()
        assert ((got.float() - ref).abs().max() / ref.abs().max()).item() < 2e-3

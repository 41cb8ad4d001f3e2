"""Symmetric grids: restricted (amax / (2^(b-1) - 1)) and full (amax / ((2^b - 1) / 2)), in the
quantizer, RTN, GPTQ, the kept codes and the recipe; full matches compressed-tensors bit for bit."""

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.quant.gptq import GPTQConfig, gptq_quantize_weight, quantization_objective
from rotaquant.quant.quantizer import (
    ActQuantizer,
    QuantSpec,
    fake_quantize,
    quant_params,
    quantize_to_int,
    to_groups,
)
from rotaquant.quant.recipe import PTQRecipe
from rotaquant.quant.rtn import rtn_quantize_weight
from rotaquant.quant.weights import attach_quantized_weight

GRIDS = ("restricted", "full")


def spec(grid, bits=4, **kw):
    return QuantSpec(bits=bits, symmetric=True, sym_grid=grid, **kw)


def test_hand_made_row_on_each_grid():
    x = torch.tensor([[-1.5, 0.3, 1.5, 0.7, -0.1]])
    # restricted: step 1.5 / 7; +-amax map to +-7, code -8 unused
    s, z = quant_params(x, spec("restricted"))
    assert torch.allclose(s, torch.tensor([[[1.5 / 7]]])) and not z.any()
    q = quantize_to_int(to_groups(x, spec("restricted")), s, z, spec("restricted")).flatten().tolist()
    assert q == [-7, 1, 7, 3, 0]
    # full: step 1.5 / 7.5 = 0.2; -amax -> -8, +amax -> 7.5 -> 8 -> clamped to 7; ties round to even
    s, z = quant_params(x, spec("full"))
    assert torch.allclose(s, torch.tensor([[[0.2]]]))
    q = quantize_to_int(to_groups(x, spec("full")), s, z, spec("full")).flatten().tolist()
    assert q == [-8, 2, 7, 4, 0]
    assert torch.allclose(fake_quantize(x, spec("full")), torch.tensor([[-1.6, 0.4, 1.4, 0.8, 0.0]]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_full_grid_uses_every_code_and_errors_stay_within_half_a_step(bits):
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(bits))
    for grid in GRIDS:
        sp = spec(grid, bits)
        s, z = quant_params(x, sp)
        q = quantize_to_int(to_groups(x, sp), s, z, sp)
        assert int(q.max()) == sp.qmax
        assert int(q.min()) == (sp.qmin if grid == "full" else -sp.qmax)
        err = (fake_quantize(x, sp) - x).abs()
        assert bool((err <= s.reshape(64, 1) / 2 + 1e-6).all())
    ratio = quant_params(x, spec("restricted", bits))[0] / quant_params(x, spec("full", bits))[0]
    assert torch.allclose(ratio, torch.full_like(ratio, (2**bits - 1) / 2 / (2 ** (bits - 1) - 1)))


def test_asymmetric_grid_ignores_sym_grid_and_bad_values_are_named():
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    a = QuantSpec(bits=4, symmetric=False)
    b = QuantSpec(bits=4, symmetric=False, sym_grid="full")
    assert torch.equal(fake_quantize(x, a), fake_quantize(x, b))
    with pytest.raises(ConfigError, match="sym_grid"):
        QuantSpec(bits=4, sym_grid="half")


def test_dict_round_trip():
    full = spec("full", group_size=32)
    assert full.to_dict()["sym_grid"] == "full" and QuantSpec.from_dict(full.to_dict()) == full
    assert "sym_grid" not in spec("restricted").to_dict()  # older readers still read the default
    assert "full" in str(full) and "full" not in str(spec("restricted"))


def test_matches_compressed_tensors_calculate_qparams_and_fake_quantize():
    ct = pytest.importorskip("compressed_tensors.quantization")
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize as ct_fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    x = torch.randn(48, 96, generator=torch.Generator().manual_seed(3)) * 3
    args = ct.QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="channel")
    lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
    scale, zp = calculate_qparams(lo, hi, args)
    ours, _ = quant_params(x, spec("full"))
    assert torch.equal(ours.reshape(scale.shape), scale)
    assert torch.equal(fake_quantize(x, spec("full")), ct_fake_quantize(x, scale, zp, args))
    # the restricted grid is what they do not compute
    assert not torch.equal(fake_quantize(x, spec("restricted")), ct_fake_quantize(x, scale, zp, args))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("group", [None, 16])
def test_rtn_and_gptq_on_each_grid(grid, group):
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(24, 64, generator=gen)
    x = torch.randn(512, 64, generator=gen) * torch.linspace(0.2, 3, 64)
    h = 2 * x.T @ x / x.shape[0]
    sp = spec(grid, group_size=group)
    rtn, rs, rz = rtn_quantize_weight(w, sp, return_params=True)
    assert torch.equal(fake_quantize(rtn, sp, rs, rz), rtn)
    assert torch.equal(rs, quant_params(w, sp)[0])
    for act_order in (False, True):
        gq, gs, gz = gptq_quantize_weight(w, h, sp, GPTQConfig(act_order=act_order), return_params=True)
        assert torch.allclose(fake_quantize(gq, sp, gs, gz), gq, atol=1e-6)
        assert quantization_objective(w, gq, h) < quantization_objective(w, rtn, h)
    # kept codes reproduce the weight and stay in [-2^(b-1), 2^(b-1) - 1]
    lin = torch.nn.Linear(64, 24, bias=False)
    with torch.no_grad():
        lin.weight.copy_(gq)
    rec = attach_quantized_weight(lin, sp, gs, gz, "gptq")
    assert torch.allclose(rec.dequantize(), gq, atol=1e-6)
    assert int(rec.codes.min()) >= -8 and int(rec.codes.max()) <= 7


def test_full_grid_is_finer_on_average():
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(256, 128, generator=gen)
    err = {g: (rtn_quantize_weight(w, spec(g)) - w).square().mean().item() for g in GRIDS}
    assert err["full"] < err["restricted"]


def test_recipe_keys_reach_every_spec():
    r = PTQRecipe(preset="none", w_bits=4, a_bits=4, k_bits=4, v_bits=4, sym_grid="full", k_sym_grid="restricted")
    assert [s.sym_grid for s in (r.weight_spec, r.act_spec, r.key_spec, r.value_spec)] == [
        "full", "full", "restricted", "full"]
    assert PTQRecipe(preset="none", w_bits=4).weight_spec.sym_grid == "restricted"
    with pytest.raises(ValueError):
        PTQRecipe(preset="none", sym_grid="wide")


def test_cli_flags_map_to_recipe_keys():
    from rotaquant.cli import build_parser
    from rotaquant.cli_flags import config_overrides

    args = build_parser().parse_args(["ptq", "--sym-grid", "full", "--a-sym-grid", "restricted"])
    assert config_overrides(args, PTQRecipe) == {"sym_grid": "full", "a_sym_grid": "restricted"}


def test_act_quantizer_stage_uses_the_grid():
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(9))
    for grid in GRIDS:
        assert torch.equal(ActQuantizer(spec(grid))(x), fake_quantize(x, spec(grid)))

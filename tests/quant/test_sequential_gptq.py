"""GPTQ in the architecture's sequential groups: a group's Hessian sees the earlier groups quantized."""

import pytest
import torch

import rotaquant.quant.layerwise as layerwise
from rotaquant.models.architecture import ArchitectureSpec
from rotaquant.quant.gptq import GPTQConfig, HessianAccumulator
from rotaquant.quant.layerwise import (
    capture_layer_inputs,
    quantize_weights_layerwise,
    sequential_groups,
)
from rotaquant.quant.quantizer import QuantSpec
from tests.conftest import tiny_model

CALIB = torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(3))


def _o_proj_hessian(layer, inputs, kwargs):
    acc = HessianAccumulator(layer.self_attn.o_proj.in_features)
    h = layer.self_attn.o_proj.register_forward_hook(lambda m, a, o: acc.add(a[0]))
    with torch.no_grad():
        for x in inputs:
            layer(x, **kwargs)
    h.remove()
    return acc.hessian


def test_o_proj_hessian_is_taken_after_qkv_are_quantized(monkeypatch):
    model = tiny_model("llama")
    fp_layer0 = __import__("copy").deepcopy(model.model.layers[0])
    seen = {}
    real = layerwise.gptq_quantize_weight

    def spy(w, hessian, spec, cfg, **kw):
        seen.setdefault(kw["name"], hessian.clone())
        return real(w, hessian, spec, cfg, **kw)

    monkeypatch.setattr(layerwise, "gptq_quantize_weight", spy)
    inputs, kwargs = capture_layer_inputs(model, model.model.layers, CALIB, torch.device("cpu"))
    quantize_weights_layerwise(model, QuantSpec(3), CALIB, ArchitectureSpec(), "gptq", progress=False)
    got = seen["model.layers.0.self_attn.o_proj"]
    # the layer as quantized (q/k/v quantized; o_proj's own weight does not change its input)
    after_qkv = _o_proj_hessian(model.model.layers[0], inputs, kwargs)
    before = _o_proj_hessian(fp_layer0, inputs, kwargs)
    torch.testing.assert_close(got, after_qkv)
    assert not torch.allclose(got, before, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("v2", [False, True])
def test_linears_sharing_an_input_are_quantized_once(monkeypatch, v2):
    names = []
    real = layerwise.gptq_quantize_weight

    def spy(w, hessian, spec, cfg, **kw):
        names.append(kw["name"])
        return real(w, hessian, spec, cfg, **kw)

    monkeypatch.setattr(layerwise, "gptq_quantize_weight", spy)
    model = tiny_model("llama")
    quantize_weights_layerwise(model, QuantSpec(4), CALIB, ArchitectureSpec(), "gptq", GPTQConfig(v2=v2),
                               progress=False)
    assert names[:4] == ["model.layers.0.self_attn.k_proj+self_attn.v_proj+self_attn.q_proj",
                         "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.up_proj+mlp.gate_proj",
                         "model.layers.0.mlp.down_proj"]
    for lin in (model.model.layers[0].self_attn.k_proj, model.model.layers[0].mlp.gate_proj):
        assert lin.rq_weight.method == ("gptqv2" if v2 else "gptq")
        torch.testing.assert_close(lin.rq_weight.dequantize(lin.weight.dtype), lin.weight)


def test_groups_follow_the_spec_and_collect_leftovers():
    layer = tiny_model("llama").model.layers[0]
    linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    groups = sequential_groups(linears, ArchitectureSpec(), "layer0")
    assert groups == [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], ["self_attn.o_proj"],
                      ["mlp.up_proj", "mlp.gate_proj"], ["mlp.down_proj"]]
    spec = ArchitectureSpec(gptq_groups=[["self_attn.q_proj"]])
    groups = sequential_groups(linears, spec, "layer0")
    assert groups[0] == ["self_attn.q_proj"] and len(groups) == 2 and len(groups[1]) == 6


def test_quantized_weights_keep_codes_that_reproduce_them():
    model = tiny_model("llama")
    quantize_weights_layerwise(model, QuantSpec(4, symmetric=False, group_size=16), CALIB, ArchitectureSpec(),
                               "gptq", progress=False)
    lin = model.model.layers[1].mlp.down_proj
    rec = lin.rq_weight
    assert rec.codes.dtype == torch.uint8 and rec.codes.max() <= 15
    torch.testing.assert_close(rec.dequantize(lin.weight.dtype), lin.weight)


def test_batched_calibration_equals_window_by_window():
    a, b = tiny_model("llama", dtype=torch.float64), tiny_model("llama", dtype=torch.float64)
    for model, batch in ((a, 1), (b, 3)):
        quantize_weights_layerwise(model, QuantSpec(4), CALIB, ArchitectureSpec(), "gptq", progress=False,
                                   calibration_batch=batch)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9, msg=name)


def test_eight_bit_asymmetric_codes_do_not_wrap():
    model = tiny_model("llama")
    quantize_weights_layerwise(model, QuantSpec(8, symmetric=False), CALIB, ArchitectureSpec(), "rtn", progress=False)
    lin = model.model.layers[0].mlp.up_proj
    assert int(lin.rq_weight.codes.max()) > 127  # the top of the 0..255 grid is used and kept
    torch.testing.assert_close(lin.rq_weight.dequantize(lin.weight.dtype), lin.weight)

"""GPTQv2 (GPTAQ): beats GPTQ on the asymmetric objective; the target's algebra; the pipeline path."""

import torch

from rotaquant.models.architecture import ArchitectureSpec
from rotaquant.quant.gptq import GPTQConfig, HessianAccumulator, gptq_quantize_weight
from rotaquant.quant.gptq_v2 import CrossAccumulator, asymmetric_objective, gptaq_target
from rotaquant.quant.layerwise import quantize_weights_layerwise
from rotaquant.quant.quantizer import QuantSpec
from tests.conftest import tiny_model


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(32, 64, generator=g, dtype=torch.float64)
    x = torch.randn(512, 64, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, 64, dtype=torch.float64)
    xq = x + 0.3 * torch.randn(512, 64, generator=g, dtype=torch.float64)  # the quantized model's input
    h, c = HessianAccumulator(64, dtype=torch.float64), CrossAccumulator(64, dtype=torch.float64)
    h.add(xq)
    c.add(x, xq)
    return w, x, xq, h.hessian, c.cross


def test_gptq_v2_beats_gptq_on_the_asymmetric_objective():
    for seed in range(3):
        w, x, xq, h, c = _data(seed)
        spec = QuantSpec(4)
        plain = gptq_quantize_weight(w, h, spec, GPTQConfig())
        v2 = gptq_quantize_weight(gptaq_target(w, h, c), h, spec, GPTQConfig())
        assert asymmetric_objective(w, v2, x, xq) < 0.9 * asymmetric_objective(w, plain, x, xq)


def test_target_is_the_unconstrained_optimum():
    w, x, xq, h, c = _data()
    target = gptaq_target(w, h, c, damp=0.0)
    best = torch.linalg.lstsq(xq, x @ w.T).solution.T  # argmin_q ||xq q^T - x w^T||
    torch.testing.assert_close(target, best, rtol=1e-8, atol=1e-8)


def test_equal_inputs_reduce_to_gptq():
    w, x, _, _, _ = _data()
    h, c = HessianAccumulator(64, dtype=torch.float64), CrossAccumulator(64, dtype=torch.float64)
    h.add(x)
    c.add(x, x)
    torch.testing.assert_close(gptaq_target(w, h.hessian, c.cross), w)


def test_pipeline_v2_quantizes_every_layer_and_differs_from_gptq():
    calib = torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(3))
    a, b = tiny_model("llama"), tiny_model("llama")
    quantize_weights_layerwise(a, QuantSpec(3), calib, ArchitectureSpec(), "gptq", GPTQConfig(), progress=False)
    quantize_weights_layerwise(b, QuantSpec(3), calib, ArchitectureSpec(), "gptq", GPTQConfig(v2=True), progress=False)
    assert b.model.layers[1].mlp.down_proj.rq_weight.method == "gptqv2"
    # layer 0's first group sees identical FP and quantized inputs: same result; later groups differ
    torch.testing.assert_close(a.model.layers[0].self_attn.q_proj.weight, b.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(a.model.layers[1].mlp.down_proj.weight, b.model.layers[1].mlp.down_proj.weight)

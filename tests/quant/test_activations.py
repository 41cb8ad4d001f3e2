"""Activation quantizers: one stage per linear input, and one computation per shared input."""

import pytest
import torch

import rotaquant
from rotaquant.quant.quantizer import ActQuantizer, QuantSpec, SharedResult
from tests.conftest import tiny_model

W4A4KV4 = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4, "preset": "none"}


def _quantizers(model):
    return [m for m in model.modules() if isinstance(m, ActQuantizer) and m.shared is not None]


@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral"])
def test_shared_inputs_are_quantized_once_with_the_same_result(family, monkeypatch):
    model = tiny_model(family)
    rotaquant.quantize(model, W4A4KV4, progress=False)
    layers = model.config.num_hidden_layers
    holders = {id(q.shared) for q in _quantizers(model)}
    assert len(holders) == 2 * layers  # q/k/v and gate/up in every layer
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    calls = []
    import rotaquant.quant.quantizer as qz

    real = qz.fake_quantize

    def counting(x, spec, *a, **kw):
        calls.append(tuple(x.shape))
        return real(x, spec, *a, **kw)

    for q in model.modules():
        if isinstance(q, ActQuantizer):
            monkeypatch.setattr(q, "_fq", counting)
    with torch.no_grad():
        shared = model(ids).logits
    n_shared = len(calls)
    for q in _quantizers(model):
        q.shared = None
    calls.clear()
    with torch.no_grad():
        separate = model(ids).logits
    assert torch.equal(shared, separate)
    assert len(calls) - n_shared == 3 * layers  # k, v and up no longer recompute their input's codes


def test_shared_result_checks_identity_and_version_and_releases():
    spec = QuantSpec(4)
    holder = SharedResult(3)
    a, b, c = (ActQuantizer(spec) for _ in range(3))
    for q in (a, b, c):
        q.shared = holder
    x = torch.randn(4, 16)
    ya = a(x)
    assert b(x) is ya  # same tensor: the kept result
    assert c(x) is ya and holder.x is None  # last user: released
    x2 = torch.randn(4, 16)
    y2 = a(x2)
    x2.add_(1.0)  # modified in place after a's call: b must recompute
    yb = b(x2)
    assert yb is not y2 and torch.equal(yb, ActQuantizer(spec)(x2))
    z = torch.randn(4, 16)
    assert not torch.equal(c(z), y2)  # another tensor is quantized afresh
    grad_x = torch.randn(4, 16, requires_grad=True)
    assert a(grad_x) is not b(grad_x)  # no sharing with autograd (rotation learning)


def test_sharing_under_inference_mode():
    """Inference tensors have no version counter: generation runs under torch.inference_mode."""
    model = tiny_model("llama")
    rotaquant.quantize(model, W4A4KV4, progress=False)
    ids = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = model(ids).logits
    with torch.no_grad():
        ref = model(ids).logits
    assert torch.equal(got, ref)

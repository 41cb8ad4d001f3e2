"""The trainable model: same function as the original, same weights as rotate(), only R trains."""

from __future__ import annotations

import pytest
import torch

from rotaquant.learn.trainable import make_trainable
from rotaquant.quant.recipe import QuantSettings
from rotaquant.rotation.matrices import RotationStore
from rotaquant.rotation.rotate import resolve_spec, rotate
from tests.conftest import tiny_model


def _prepare(family="llama", tied=False, settings=None, seed=0):
    model = tiny_model(family, tied=tied)
    spec = resolve_spec(model, "auto")
    store = RotationStore(spec, model.config, seed=seed, mode="hadamard")
    return model, make_trainable(model, spec, store, settings or QuantSettings())


@pytest.mark.parametrize("family,tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen3", True)])
def test_parametrized_model_computes_the_same_function(family, tied):
    ref = tiny_model(family, tied=tied)
    ids = torch.randint(0, 96, (2, 24))
    with torch.no_grad():
        expected = ref(ids).logits
    model, _ = _prepare(family, tied)
    with torch.no_grad():
        got = model(ids).logits
    assert (got - expected).abs().max().item() < 1e-4 * expected.abs().max().item()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_parametrized_weights_equal_rotate(family):
    """At the initial matrices, every computed weight is the one rotate() fuses (same seed)."""
    model, tm = _prepare(family)
    fused = tiny_model(family)
    rotate(fused, "auto", mode="hadamard", seed=0, progress=False)
    got, want = dict(model.named_modules()), dict(fused.named_modules())
    for name in ("model.embed_tokens", "lm_head", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.o_proj",
                 "model.layers.1.mlp.down_proj", "model.layers.0.mlp.gate_proj"):
        assert torch.allclose(got[name].weight, want[name].weight, atol=1e-5), name
    if family == "qwen2":
        v = "model.layers.0.self_attn.v_proj"
        assert torch.allclose(got[v].bias, want[v].bias, atol=1e-6)
    tm.remove()


def test_only_rotations_train_and_receive_gradients():
    model, tm = _prepare(settings=QuantSettings(w_bits=4, a_bits=4, k_bits=4, v_bits=4))
    assert not any(p.requires_grad for n, p in model.named_parameters())
    keys = [f"{n}@{g}" if g else n for n, g in tm.rotations.keys]
    assert keys == ["r1", "r2@layers.0", "r2@layers.1"]
    loss = model(torch.randint(0, 96, (1, 16)), labels=torch.randint(0, 96, (1, 16))).loss
    loss.backward()
    for p in tm.rotations.matrices:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_remove_takes_out_parametrizations_and_quantizers():
    ref = tiny_model("qwen2")
    ids = torch.randint(0, 96, (2, 24))
    with torch.no_grad():
        expected = ref(ids).logits
    model, tm = _prepare("qwen2", settings=QuantSettings(w_bits=3, a_bits=3, k_bits=3, v_bits=3))
    with torch.no_grad():
        assert (model(ids).logits - expected).abs().max() > 1e-2  # quantized: different
    tm.remove()
    from torch.nn.utils import parametrize

    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    with torch.no_grad():
        got = model(ids).logits  # folded norms and online R3/R4 remain: the same function
    assert (got - expected).abs().max().item() < 1e-4 * expected.abs().max().item()


def test_learning_quantizes_o_proj_per_head():
    from rotaquant.errors import ConfigError
    from rotaquant.rotation.spec import load_spec

    model = tiny_model("llama")
    spec = load_spec("llama")
    settings = QuantSettings(a_bits=4, a_asym=True, o_proj_input="per_head")
    make_trainable(model, spec, RotationStore(spec, model.config), settings)
    o_quant = model.model.layers[0].self_attn.o_proj.rq_input.stages["a_quant"]
    assert o_quant.spec.group_size == 16 and not o_quant.spec.symmetric
    with pytest.raises(ConfigError, match="mixed"):
        make_trainable(tiny_model("llama"), spec, RotationStore(spec, model.config),
                       QuantSettings(a_bits=4, o_proj_input="mixed"))

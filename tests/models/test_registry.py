import pytest
import torch

import rotaquant
from rotaquant.models.registry import (
    UnknownArchitectureError,
    lookup,
    register_model,
    registered_models,
    unregister_model,
)
from rotaquant.rotation.rotate import rotate
from tests.conftest import tiny_model


def test_builtin_registrations():
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"} <= set(registered_models())


def test_unknown_architecture_lists_known_and_how_to_register():
    class GPTFooForCausalLM(torch.nn.Module):
        pass

    with pytest.raises(UnknownArchitectureError, match=r"LlamaForCausalLM.*register_model\('GPTFooForCausalLM'"):
        lookup(GPTFooForCausalLM())


def test_register_with_config_then_rotate():
    model = tiny_model("llama", dtype=torch.float64)

    class MyLlama(type(model)):
        pass

    model.__class__ = MyLlama
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
    try:
        rotaquant.register_model("MyLlama", config="llama")
        rotate(model, progress=False)
        with torch.no_grad():
            assert ((model(ids).logits - ref).abs().max() / ref.abs().max()) < 1e-6
    finally:
        unregister_model("MyLlama")


def test_register_with_functions_r1_only():
    model = tiny_model("llama", tied=True, dtype=torch.float64)

    class FnLlama(type(model)):
        pass

    model.__class__ = FnLlama

    def norm_pairs(m):
        pairs = []
        for layer in m.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            pairs += [(layer.input_layernorm, [a.q_proj, a.k_proj, a.v_proj]),
                      (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])]
        return pairs + [(m.model.norm, [m.lm_head])]

    def residual(m):
        out = [(m.model.embed_tokens, True, False), (m.lm_head, True, False)]
        for layer in m.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            out += [(x, True, False) for x in (a.q_proj, a.k_proj, a.v_proj, mlp.gate_proj, mlp.up_proj)]
            out += [(a.o_proj, False, True), (mlp.down_proj, False, True)]
        return out

    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
    try:
        register_model("FnLlama", norm_linear_pairs=norm_pairs, residual_linears=residual)
        state = rotate(model, progress=False)
        assert state.store is None and state.untied
        with torch.no_grad():
            assert ((model(ids).logits - ref).abs().max() / ref.abs().max()) < 1e-6
    finally:
        unregister_model("FnLlama")


def test_register_errors():
    with pytest.raises(rotaquant.errors.ConfigError, match="either"):
        register_model("X")
    with pytest.raises(rotaquant.errors.ConfigError, match="already registered"):
        register_model("LlamaForCausalLM", config="llama")

import pytest
import torch

import rotaquant
from rotaquant.rotation.registry import (
    RegistrationCheckError,
    UnknownArchitectureError,
    lookup,
    register_model,
    registered_models,
    unregister_model,
)
from rotaquant.rotation.rotate import rotate
from rotaquant.rotation.spec import load_spec
from tests.conftest import tiny_model


def test_builtin_registrations():
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"} <= set(registered_models())


def test_unknown_architecture_falls_back_to_universal_or_lists_known(caplog):
    class GPTFooForCausalLM(torch.nn.Module):
        pass

    with caplog.at_level("INFO", logger="rotaquant.rotation.registry"):
        entry = lookup(GPTFooForCausalLM())
    assert entry.config.rotation_matrices.keys() == {"r1", "r2"} and "transformer_universal" in caplog.text
    with pytest.raises(UnknownArchitectureError, match=r"LlamaForCausalLM.*register_model\('GPTFooForCausalLM'"):
        lookup(GPTFooForCausalLM(), fallback=False)


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


def test_register_checks_function_preservation_on_a_tiny_instance():
    """A hand-broken spec (the attention norm left out of the fuse list) is refused."""
    broken = load_spec("llama").model_dump()
    broken["norm_fuse_config"]["decoder_layer_fuse"] = broken["norm_fuse_config"]["decoder_layer_fuse"][1:]
    try:
        with pytest.raises(RegistrationCheckError, match="changes the model's function"):
            register_model("LlamaForCausalLM", config=broken, overwrite=True)
        assert lookup("LlamaForCausalLM").config.norm_fuse_config.decoder_layer_fuse[0][0] == "input_layernorm"
    finally:
        register_model("LlamaForCausalLM", config="llama", overwrite=True)


@pytest.mark.parametrize("cls,spec", [("LlamaForCausalLM", "llama"), ("Qwen2ForCausalLM", "qwen2"),
                                      ("Qwen3ForCausalLM", "qwen3"), ("MistralForCausalLM", "mistral")])
def test_builtin_specs_pass_the_registration_check(cls, spec):
    register_model(cls, config=spec, overwrite=True, verify=True)


def test_register_errors():
    with pytest.raises(rotaquant.errors.ConfigError, match="already registered"):
        register_model("LlamaForCausalLM", config="llama")

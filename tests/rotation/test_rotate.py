"""Function preservation: a rotated model computes the same logits (float64)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rotaquant.errors import ConfigError
from rotaquant.export.hf import export_hf
from rotaquant.jobs.files import write_rotation_file
from rotaquant.rotation.rotate import rotate, rotation_record
from rotaquant.stages import remove_stages, stage_map
from tests.conftest import tiny_model

# transformers' RMSNorm computes in float32 even for float64 models, so "equal" means the
# rounding of one float32 normalisation (~1e-7 relative), well inside the 1e-6 target.
RTOL = 1e-6

CASES = [
    ("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True),
    ("qwen3", False), ("qwen3", True), ("mistral", False), ("mistral", True),
]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family,tied", CASES)
@pytest.mark.parametrize("mode", ["hadamard", "orthogonal"])
def test_rotated_model_computes_the_same_function(family, tied, mode):
    model = tiny_model(family, tied=tied, dtype=torch.float64)
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    ref = logits(model, ids)
    state = rotate(model, mode=mode, seed=3, progress=False)
    assert state.untied == tied and state.online_stages == 2 + 2  # R3 + R4 in each layer
    assert model.config._attn_implementation == "rotaquant_sdpa"
    assert rel_err(logits(model, ids), ref) <= RTOL
    # the weights really changed and the norms were folded
    assert torch.all(model.model.layers[0].input_layernorm.weight == 1)


def test_qwen2_bias_rotated_on_v_only():
    model = tiny_model("qwen2", dtype=torch.float64)
    q_bias = model.model.layers[0].self_attn.q_proj.bias.clone()
    v_bias = model.model.layers[0].self_attn.v_proj.bias.clone()
    rotate(model, progress=False)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.bias, q_bias)
    assert not torch.allclose(model.model.layers[0].self_attn.v_proj.bias, v_bias)


def test_online_rotations_are_really_applied():
    """Dropping R3 or R4 after rotation must break the function (the stages are not no-ops)."""
    model = tiny_model("llama", dtype=torch.float64)
    ids = torch.randint(0, 96, (1, 16))
    ref = logits(model, ids)
    rotate(model, mode="hadamard", progress=False)
    assert remove_stages(model, "r4") == 2  # the pre-rotated down_proj now sees raw inputs
    assert rel_err(logits(model, ids), ref) > 1e-3
    model = tiny_model("llama", dtype=torch.float64)
    rotate(model, progress=False)
    sites = stage_map(model)
    assert sites["model.layers.0.self_attn:query"] == ["r3"] and sites["model.layers.0.self_attn:key"] == ["r3"]
    q = torch.randn(1, 4, 5, 16, dtype=torch.float64)
    rotated = model.model.layers[0].self_attn.rq_attention.query(q)
    assert rotated.shape == q.shape and not torch.allclose(rotated, q)
    torch.testing.assert_close(rotated @ rotated.transpose(-1, -2), q @ q.transpose(-1, -2))


def test_without_online_and_export_reloads_with_plain_transformers(tmp_path):
    model = tiny_model("qwen2", tied=True, dtype=torch.float64)
    ids = torch.randint(0, 96, (2, 20))
    ref = logits(model, ids)
    state = rotate(model, online=False, progress=False)
    assert state.online_stages == 0 and model.config._attn_implementation == "sdpa"
    export_hf(model, None, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float64)
    assert rel_err(logits(reloaded, ids), ref) <= RTOL


def test_export_refuses_online_model(tmp_path):
    model = tiny_model("llama")
    rotate(model, progress=False)
    with pytest.raises(ValueError, match="online"):
        export_hf(model, None, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_rotate_twice_is_refused_and_state_is_kept():
    model = tiny_model("llama")
    rotate(model, progress=False)
    assert rotation_record(model) is not None and "rq_rotation" in repr(model)
    with pytest.raises(ConfigError, match="already rotated"):
        rotate(model)


def test_universal_config_on_llama_skips_missing_patterns():
    model = tiny_model("llama", dtype=torch.float64)
    ids = torch.randint(0, 96, (1, 12))
    ref = logits(model, ids)
    state = rotate(model, "transformer_universal", progress=False)
    assert state.online_stages == 0
    assert rel_err(logits(model, ids), ref) <= RTOL


def test_saved_rotations_reproduce_the_same_model(tmp_path):
    a, b = tiny_model("llama", dtype=torch.float64), tiny_model("llama", dtype=torch.float64)
    state = rotate(a, mode="orthogonal", seed=7, online=False, progress=False)
    write_rotation_file(tmp_path / "rot.safetensors", state.store.state_dict())
    rotate(b, mode="orthogonal", seed=99, rotation_path=tmp_path / "rot.safetensors", online=False, progress=False)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=n)


def test_seed_changes_the_rotation():
    a, b = tiny_model("llama"), tiny_model("llama")
    rotate(a, seed=1, online=False, progress=False)
    rotate(b, seed=2, online=False, progress=False)
    assert not torch.allclose(a.model.embed_tokens.weight, b.model.embed_tokens.weight)

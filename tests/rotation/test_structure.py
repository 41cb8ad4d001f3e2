"""The structural check: a config that misses a reader/writer of the residual stream is refused
before any weight changes; verify=True refuses a changed function."""

from __future__ import annotations

import copy

import pytest
import torch

from rotaquant import rotate
from rotaquant.config import RotateConfig
from rotaquant.models.tiny import tiny_instance
from rotaquant.rotation.rotate import AlreadyRotatedError, rotation_record
from rotaquant.rotation.spec import RotationConfigError, load_spec
from rotaquant.rotation.structure import RotationStructureError, check_rotation_structure
from rotaquant.rotation.verify import FunctionChangedError
from tests.conftest import tiny_model

IDS = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(0))


def llama_spec(edit) -> dict:
    data = copy.deepcopy(load_spec("llama").model_dump())
    edit(data)
    return data


def drop_post_norm(d):
    d["norm_fuse_config"]["decoder_layer_fuse"].pop(1)


BREAKAGES = {
    "unfolded_norm": (drop_post_norm, "model.layers.0.post_attention_layernorm",
                      "decoder_layer_fuse: [post_attention_layernorm, [mlp.gate_proj, mlp.up_proj]]"),
    "writer_without_r1": (lambda d: d["rotation_config"].pop("*down_proj"), "model.layers.1.mlp.down_proj",
                          '"*mlp.down_proj": [null, r1]'),
    "reader_without_r1": (lambda d: d["rotation_config"].pop("*lm_head"), "lm_head", '"*lm_head": [r1, null]'),
    "fold_incomplete": (lambda d: d["norm_fuse_config"]["decoder_layer_fuse"][0][1].remove("self_attn.k_proj"),
                        "model.layers.0.self_attn.k_proj", "add self_attn.k_proj to the [input_layernorm"),
    "unrotated_embedding": (lambda d: d["rotation_config"].pop("*embed_tokens"), "model.embed_tokens",
                            '"*model.embed_tokens": [r1, null]'),
}


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
def test_hand_broken_llama_config_is_refused_before_any_change(kind):
    edit, module, fix = BREAKAGES[kind]
    model = tiny_model("llama", dtype=torch.float64)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        ref = model(IDS).logits
    with pytest.raises(RotationStructureError) as info:
        rotate(model, llama_spec(edit), progress=False)
    assert isinstance(info.value, RotationConfigError)
    gaps = {(g.kind, g.module) for g in info.value.gaps}
    assert (kind, module) in gaps, info.value.gaps
    assert fix in str(info.value)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert rotation_record(model) is None and "rq_" not in repr(model)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, ref)


@pytest.mark.parametrize("cls,spec", [("LlamaForCausalLM", "llama"), ("Qwen2ForCausalLM", "qwen2"),
                                      ("Qwen3ForCausalLM", "qwen3"), ("MistralForCausalLM", "mistral"),
                                      ("LlamaForCausalLM", "transformer_universal")])
def test_builtin_configs_have_no_gaps(cls, spec):
    assert check_rotation_structure(tiny_instance(cls), load_spec(spec)) == []


def test_check_in_float32_and_with_stages_present():
    """Quantizer stages already at the linears' inputs do not confuse the probe (it sees the
    input before them), and float32 tolerances hold."""
    from rotaquant import quantize

    model = tiny_model("llama")
    quantize(model, a_bits=4, k_bits=4, v_bits=4, preset="none", rotate=False, progress=False)
    assert check_rotation_structure(model, load_spec("llama")) == []


def test_probe_keeps_train_flags():
    model = tiny_model("llama").train()
    model.model.layers[0].eval()
    check_rotation_structure(model, load_spec("llama"))
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training


def test_norm_writing_to_the_stream_is_named():
    """Gemma2's post-norms write to the residual stream: no config of this format can rotate it."""
    model = tiny_instance("Gemma2ForCausalLM")
    if model is None:
        pytest.skip("transformers has no Gemma2ForCausalLM")
    spec = load_spec(llama_spec(lambda d: d["architecture"].update(norm_kind="rms_offset")))
    gaps = check_rotation_structure(model, spec)
    assert ("unknown_writer", "model.layers.0.post_attention_layernorm") in {(g.kind, g.module) for g in gaps}


def test_config_without_residual_rotation_has_nothing_to_check():
    data = llama_spec(lambda d: d.update(rotation_config={"*v_proj": [None, "r2"], "*o_proj": ["r2", None]},
                                         norm_fuse_config=None))
    assert check_rotation_structure(tiny_model("llama", dtype=torch.float64), load_spec(data)) == []


def test_verify_refuses_a_changed_function_the_structure_cannot_see():
    """R2 on V's output without R2 on O's input: the residual stream is covered, the heads are not."""
    data = llama_spec(lambda d: d["rotation_config"].update({"*o_proj": [None, "r1"]}))
    model = tiny_model("llama", dtype=torch.float64)
    assert check_rotation_structure(model, load_spec(data)) == []
    with pytest.raises(FunctionChangedError, match="discard it"):
        rotate(model, data, verify=True, progress=False)
    assert rotation_record(model).summary["verified"] == "failed"
    with pytest.raises(AlreadyRotatedError):
        rotate(model, progress=False)


def test_verify_passes_and_is_recorded():
    model = tiny_model("llama", dtype=torch.float64)
    rotate(model, verify=True, progress=False)
    assert rotation_record(model).summary["verified"] == "ok"


def test_cli_rotate_verifies_by_default():
    assert RotateConfig(output="out").verify is True
    from rotaquant.cli import build_parser

    args = build_parser().parse_args(["rotate", "--output", "o", "--no-verify"])
    assert args.verify is False

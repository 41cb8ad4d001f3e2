"""Mamba2 and Mamba2/attention hybrids (Bamba, NemotronH): rotation preserves the function,
quantization runs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rotaquant import quantize, rotate
from rotaquant.models.tiny import tiny_instance
from rotaquant.rotation.registry import lookup
from rotaquant.rotation.structure import RotationStructureError, check_rotation_structure
from rotaquant.stages import stage_map

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
HYBRIDS = ["Mamba2ForCausalLM", "BambaForCausalLM", "NemotronHForCausalLM"]


def model_of(cls: str, dtype=torch.float64, **overrides):
    from rotaquant.models import tiny

    saved = dict(tiny.TINY_OVERRIDES.get(cls, {}))
    tiny.TINY_OVERRIDES[cls] = {**saved, **overrides}
    try:
        model = tiny_instance(cls, dtype=dtype)
    finally:
        tiny.TINY_OVERRIDES[cls] = saved
    if model is None:
        pytest.skip(f"transformers has no {cls}")
    return model


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


IDS = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cls", HYBRIDS)
@pytest.mark.parametrize("online", [True, False])
def test_auto_config_preserves_logits_in_float64(cls, online):
    model = model_of(cls)
    ref = logits(model, IDS)
    state = rotate(model, "auto", online=online, verify=True, progress=False)
    assert rel_err(logits(model, IDS), ref) < 1e-6
    sites = stage_map(model)
    if online:  # R4-like Hadamard at every out_proj input, R3/R4 only where attention/an MLP exist
        assert all(sites[f"{n}:input"] == ["rm"] for n, m in model.named_modules() if n.endswith("out_proj"))
        if cls == "BambaForCausalLM":
            assert sites["model.layers.1.self_attn:query"] == ["r3"]
            assert sites["model.layers.0.feed_forward.down_proj:input"] == ["r4"]
            assert not any("layers.0.mamba" in k and "r3" in v for k, v in sites.items())
    else:
        assert state.online_stages == 0 and sites == {}


@pytest.mark.parametrize("attn_layers", [[0], [0, 1], []])
def test_bamba_any_layer_pattern(attn_layers):
    """Attention first, attention only or Mamba only: the same config fits every layout."""
    model = model_of("BambaForCausalLM", attn_layer_indices=attn_layers)
    ref = logits(model, IDS)
    rotate(model, "auto", progress=False)
    assert rel_err(logits(model, IDS), ref) < 1e-6


@pytest.mark.parametrize("cls", HYBRIDS)
def test_tied_embeddings(cls):
    model = model_of(cls, tie_word_embeddings=True)
    if model.lm_head.weight is not model.get_input_embeddings().weight:
        pytest.skip(f"this transformers version does not tie {cls}'s embeddings")
    ref = logits(model, IDS)
    state = rotate(model, "auto", progress=False)
    assert state.untied and rel_err(logits(model, IDS), ref) < 1e-6


@pytest.mark.parametrize("cls", HYBRIDS)
def test_builtin_config_has_no_gaps_and_is_registered(cls):
    model = model_of(cls)
    spec = lookup(model).config
    assert check_rotation_structure(model, spec) == []
    assert spec.architecture.layers in ("backbone.layers", "model.layers")


@pytest.mark.parametrize("cls", HYBRIDS)
def test_transformer_universal_preserves_or_refuses_untouched(cls):
    model = model_of(cls)
    ref = logits(model, IDS)
    before = copy.deepcopy(model.state_dict())
    try:
        rotate(model, "transformer_universal", verify=True, progress=False)
    except RotationStructureError as exc:
        assert exc.gaps and "unfolded_norm" in {g.kind for g in exc.gaps}
        assert "norm_fuse_config" in str(exc)
        after = model.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        assert "rq_" not in repr(model)
        assert torch.equal(logits(model, IDS), ref)
    else:
        assert rel_err(logits(model, IDS), ref) < 1e-6


def test_mamba2_universal_names_the_missing_keys():
    with pytest.raises(RotationStructureError) as info:
        rotate(model_of("Mamba2ForCausalLM"), "transformer_universal", progress=False)
    text = str(info.value)
    for needle in ('"*backbone.embeddings": [r1, null]', "[norm, [mixer.in_proj]]", "[backbone.norm_f, lm_head]"):
        assert needle in text


@pytest.mark.parametrize("cls", HYBRIDS)
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantize_w4a4(cls, method):
    """Linears quantized (in_proj/out_proj included), activations at their inputs, conv1d and the SSM
    left in full precision, K/V quantizers only where attention exists."""
    model = model_of(cls, dtype=torch.float32)
    cal = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(0))
    state = quantize(model, w_bits=4, a_bits=4, k_bits=4, v_bits=4, w_method=method, calibration=cal,
                     preset="none", progress=False)
    assert state.rotated_here
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]
    assert all("rq_weight" in m._modules for _, m in linears)
    assert all("rq_weight" not in m._modules for m in model.modules() if isinstance(m, nn.Conv1d))
    sites = stage_map(model)
    for n, _ in linears:
        assert sites[f"{n}:input"][-1] == "a_quant"
    assert all(sites[f"{n}:input"] == ["rm", "a_quant"] for n, _ in linears if n.endswith("out_proj"))
    assert state.kv_modules == (0 if cls == "Mamba2ForCausalLM" else 1)  # one attention layer in the hybrids
    assert torch.isfinite(logits(model, IDS)).all()


def test_gated_norm_gain_matters_and_is_left_in_place():
    """The mixer's gated RMSNorm keeps its (perturbed) gain: R1 never reaches it."""
    model = model_of("Mamba2ForCausalLM")
    gains = [layer.mixer.norm.weight.clone() for layer in model.backbone.layers]
    assert all((g != 1).any() for g in gains)
    rotate(model, "auto", progress=False)
    assert all(torch.equal(g, layer.mixer.norm.weight) for g, layer in zip(gains, model.backbone.layers, strict=True))

"""Stages as modules: fixed order by kind, repr, deepcopy, pickling, state_dict, removal."""

import copy
import io
import pickle

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.quant.pipeline import quantize
from rotaquant.quant.quantizer import ActQuantizer, QuantSpec
from rotaquant.rotation.online import OnlineHadamard
from rotaquant.rotation.rotate import AlreadyQuantizedError, rotate
from rotaquant.stages import StageError, StagePipeline, remove_stages, stage_map
from tests.conftest import tiny_model

IDS = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(2))
W4A4KV4 = dict(w_bits=4, a_bits=4, k_bits=4, v_bits=4, preset="none")


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def processed(dtype=torch.float32):
    model = tiny_model("llama", dtype=dtype)
    rotate(model, seed=0, progress=False)
    quantize(model, **W4A4KV4, progress=False)
    return model


def test_pipeline_orders_by_kind_not_by_call_order():
    pipe = StagePipeline()
    pipe.add("q", ActQuantizer(QuantSpec(4)))
    pipe.add("r", OnlineHadamard(16))
    assert pipe.names() == ["r", "q"]
    with pytest.raises(StageError, match="already"):
        pipe.add("q", ActQuantizer(QuantSpec(8)))
    with pytest.raises(StageError, match="Stage"):
        pipe.add("x", torch.nn.Identity())


def test_sites_in_repr_and_state_dict():
    model = processed()
    text = repr(model)
    assert "rq_input" in text and "OnlineHadamard" in text and "ActQuantizer" in text and "rq_attention" in text
    sites = stage_map(model)
    assert sites["model.layers.0.mlp.down_proj:input"] == ["r4", "a_quant"]
    assert sites["model.layers.1.self_attn:key"] == ["r3", "k_quant"]
    keys = model.state_dict().keys()
    assert "model.layers.0.mlp.down_proj.rq_input.stages.r4.signs" not in keys  # r4 is base_hadamard
    assert "model.layers.0.mlp.down_proj.rq_weight.packed_codes" in keys  # int4 codes, two per byte


def test_deepcopy_and_pickle_give_identical_logits():
    model = processed()
    ref = logits(model)
    torch.testing.assert_close(logits(copy.deepcopy(model)), ref, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    torch.testing.assert_close(logits(torch.load(buf, weights_only=False)), ref, rtol=0, atol=0)
    torch.testing.assert_close(logits(pickle.loads(pickle.dumps(model))), ref, rtol=0, atol=0)


def test_state_dict_round_trip():
    a = processed()
    b = copy.deepcopy(a)
    with torch.no_grad():
        for t in b.state_dict().values():
            t.zero_() if t.is_floating_point() else t.fill_(0)
    assert not torch.allclose(logits(b), logits(a))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(logits(b), logits(a), rtol=0, atol=0)


def test_random_signs_are_saved():
    model = tiny_model("llama")
    spec = {"r3": "hadamard"}
    from rotaquant.rotation.spec import load_spec

    data = load_spec("llama").model_dump()
    data["rotation_matrices"]["r4"]["mode"] = "hadamard"
    rotate(model, data, progress=False, mode=None)
    assert spec and "model.layers.0.mlp.down_proj.rq_input.stages.r4.signs" in model.state_dict()


def test_quantize_then_rotate_is_refused_for_weights():
    model = tiny_model("llama")
    quantize(model, w_bits=4, preset="none", rotate=False, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AlreadyQuantizedError, match="Rotate first"):
        rotate(model, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_activation_quantizers_then_rotate_equals_the_other_order():
    a, b = tiny_model("llama"), tiny_model("llama")
    settings = dict(a_bits=4, k_bits=4, v_bits=4, preset="none")
    quantize(a, **settings, rotate=False, progress=False)
    rotate(a, seed=4, progress=False)
    rotate(b, seed=4, progress=False)
    quantize(b, **settings, progress=False)
    assert stage_map(a) == stage_map(b)
    torch.testing.assert_close(logits(a), logits(b), rtol=0, atol=0)


def test_remove_stages_restores_base_attention():
    model = tiny_model("llama")
    ref = logits(model)
    quantize(model, k_bits=4, v_bits=4, a_bits=4, preset="none", rotate=False, progress=False)
    assert model.config._attn_implementation == "rotaquant_sdpa"
    remove_stages(model)
    assert stage_map(model) == {} and model.config._attn_implementation == "sdpa"
    assert "rq_" not in repr(model)
    torch.testing.assert_close(logits(model), ref)


def test_o_proj_is_quantized_per_head():
    """Fails if the o_proj quantizer is bypassed or is per token over the whole hidden size."""
    model = tiny_model("llama")
    quantize(model, a_bits=4, o_proj_input="per_head", preset="none", rotate=False, progress=False)
    o_quant = model.model.layers[0].self_attn.o_proj.rq_input.stages["a_quant"]
    q_quant = model.model.layers[0].self_attn.q_proj.rq_input.stages["a_quant"]
    assert o_quant.spec.group_size == 16 and q_quant.spec.group_size is None
    seen = {}
    o_proj = model.model.layers[0].self_attn.o_proj
    o_proj.register_forward_hook(lambda m, a, out: seen.setdefault("x", a[0]))
    o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("raw", a[0]), prepend=True)
    logits(model)
    x, raw = seen["x"], seen["raw"]
    assert not torch.equal(x, raw)
    per_head = raw.reshape(*raw.shape[:-1], 4, 16)
    amax = per_head.abs().amax(-1, keepdim=True)
    expect = (torch.round(per_head / (amax / 7)).clamp(-8, 7) * (amax / 7)).reshape(raw.shape)
    torch.testing.assert_close(x, expect)


def test_mixed_o_proj_needs_head_mixing():
    model = tiny_model("llama")
    rotate(model, progress=False)
    with pytest.raises(ConfigError, match="head_mixing"):
        quantize(model, a_bits=4, o_proj_input="mixed", preset="none", progress=False)


def test_head_mixing_preserves_the_function():
    model = tiny_model("llama", dtype=torch.float64)
    ref = logits(model)
    rotate(model, head_mixing=True, progress=False)
    assert stage_map(model)["model.layers.0.self_attn.o_proj:input"] == ["rh"]
    out = logits(model)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-6


def test_pipeline_lets_a_stage_compute_the_next_one():
    """A stage whose ``fused_forward`` answers replaces itself and its successor; one that
    returns None (the default, and every stage on CPU) leaves both to run one after the other."""
    from rotaquant.stages import Stage

    class Double(Stage):
        order = 0

        def forward(self, x):
            return 2 * x

        def fused_forward(self, x, following):
            return 2 * x + 100 if isinstance(following, AddOne) else None

    class AddOne(Stage):
        order = 10

        def forward(self, x):
            return x + 1

    pipe = StagePipeline()
    pipe.add("b", AddOne())
    pipe.add("a", Double())
    x = torch.ones(3)
    assert torch.equal(pipe(x), torch.full((3,), 102.0))  # fused: 2 * 1 + 100
    pipe.remove("b")
    assert torch.equal(pipe(x), torch.full((3,), 2.0))
    model = processed()  # on CPU nothing fuses: the online Hadamard + quantizer run as two stages
    down = model.model.layers[0].mlp.down_proj.rq_input
    h = torch.randn(2, 5, 96)
    assert torch.equal(down(h), down.stages["a_quant"](down.stages["r4"](h)))

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.quant.smoothquant import smooth, smooth_scales, smoothing_groups
from tests.conftest import tiny_model


def test_scales_formula_on_hand_made_tensors():
    act = torch.tensor([4.0, 1.0, 0.25, 0.0])
    w = torch.tensor([1.0, 4.0, 0.25, 2.0])
    s = smooth_scales(act, w, alpha=0.5, min_scale=1e-5)
    assert s.dtype == torch.float64
    expected = torch.tensor([2.0 / 1.0, 1.0 / 2.0, 0.5 / 0.5, (1e-5) ** 0.5 / 2 ** 0.5], dtype=torch.float64)
    torch.testing.assert_close(s, expected)
    # alpha 1: all into the weights (s = max|X|); alpha 0: s = 1 / max|W|
    torch.testing.assert_close(smooth_scales(act[:3], w[:3], alpha=1.0), act[:3].double())
    torch.testing.assert_close(smooth_scales(act[:3], w[:3], alpha=0.0), 1 / w[:3].double())
    with pytest.raises(ConfigError, match="alpha"):
        smooth_scales(act, w, alpha=1.5)


def _windows(n=3, seqlen=24, seed=0):
    return torch.randint(0, 96, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("include_vo", [False, True])
def test_smoothing_preserves_the_function_in_float64(family, include_vo):
    model = tiny_model(family, dtype=torch.float64)
    ids = _windows(2, 20, seed=1)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    scales = smooth(model, _windows(), alpha=0.5, include_vo=include_vo, progress=False)
    assert len(scales) == 2 * (3 if include_vo else 2)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    # smoothing did change the weights: the norms are no longer what they were
    norm = model.model.layers[0].input_layernorm.weight
    assert not torch.allclose(norm, torch.ones_like(norm))
    assert not torch.allclose(scales["model.layers.0.input_layernorm"], torch.ones(64, dtype=torch.float64))


def test_smoothing_flattens_the_linear_input_channels():
    model = tiny_model("llama", dtype=torch.float64)
    from rotaquant.eval.capture import capture

    name = "model.layers.1.mlp.up_proj"
    data = _windows()
    before = capture(model, name, data, stats=("absmax",))[name]["input"].absmax
    smooth(model, data, alpha=0.5, progress=False)
    after = capture(model, name, data, stats=("absmax",))[name]["input"].absmax
    assert after.max() / after.min() < before.max() / before.min()


def test_groups_come_from_the_rotation_config():
    model = tiny_model("llama")
    groups = smoothing_groups(model)
    names = [(src, [n for n, _ in lins]) for src, _, lins in groups]
    assert names[0] == ("model.layers.0.input_layernorm",
                        ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                         "model.layers.0.self_attn.v_proj"])
    assert names[1][0] == "model.layers.0.post_attention_layernorm"
    with pytest.raises(ConfigError, match="no such module"):
        smoothing_groups(model, extra=[("self_attn.w_proj", ["self_attn.o_proj"])])

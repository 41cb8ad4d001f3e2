"""Rotated + quantized models on every attention backend: same logits, causal, padding, decode."""

import pytest
import torch

from rotaquant.quant.pipeline import quantize
from rotaquant.rotation.rotate import rotate
from tests.conftest import tiny_model

FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]
IDS = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(5))


def processed(family, impl, dtype=torch.float64):
    """A tiny model, rotated (R1-R4) and W8A8KV4-quantized (RTN), on backend ``impl``."""
    model = tiny_model(family, dtype=dtype)
    model.set_attn_implementation(impl)
    rotate(model, seed=1, progress=False)
    quantize(model, w_bits=8, a_bits=8, k_bits=4, v_bits=4, preset="none", progress=False)
    return model


def backends():
    # flex attention is compiled by transformers; on CPU that needs inductor's C++ toolchain, which
    # a CI box may lack: it is checked on CUDA by test_flex_attention_on_cuda
    return ["eager", "sdpa"]


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_backends_agree_and_keep_their_own_base(family):
    ref = None
    for impl in backends():
        model = processed(family, impl)
        assert model.config._attn_implementation == f"rotaquant_{impl}"
        out = logits(model, IDS)
        if ref is None:
            ref = out
        else:
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6, msg=impl)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", FAMILIES)
def test_flex_attention_on_cuda(family):
    """Flex attention (compiled by transformers) keeps the rotated + quantized model's function:
    same logits as sdpa on the GPU in float32, and causal."""
    outs = {}
    for impl in ["sdpa", "flex_attention"]:
        model = processed(family, impl, dtype=torch.float32).cuda()
        assert model.config._attn_implementation == f"rotaquant_{impl}"
        ids = IDS.cuda()
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 7) % 96
        outs[impl] = (logits(model, ids), logits(model, changed))
    flex, flex_changed = outs["flex_attention"]
    torch.testing.assert_close(flex, outs["sdpa"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flex[:, :-1], flex_changed[:, :-1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_causal_after_rotate_and_quantize(family, impl):
    model = processed(family, impl)
    changed = IDS.clone()
    changed[:, -1] = (changed[:, -1] + 7) % 96
    a, b = logits(model, IDS), logits(model, changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=1e-10)
    assert not torch.allclose(a[:, -1], b[:, -1])


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_left_padding_matches_unpadded(impl):
    # float32: transformers' own eager path gives NaN with padding in float64, rotaquant or not
    model = processed("llama", impl, dtype=torch.float32)
    ids = IDS[:1, :12]
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], dim=1)
    plain = logits(model, ids)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() does: RoPE ignores the padding
    with_pad = logits(model, padded, attention_mask=mask, position_ids=positions)[:, 5:]
    torch.testing.assert_close(with_pad, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_decode_with_kv_cache_equals_full_forward(family, impl):
    model = processed(family, impl)
    full = logits(model, IDS)
    with torch.no_grad():
        out = model(IDS[:, :-3], use_cache=True)
        cache, steps = out.past_key_values, []
        for t in range(IDS.shape[1] - 3, IDS.shape[1]):
            out = model(IDS[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, -3:], rtol=1e-6, atol=1e-6)

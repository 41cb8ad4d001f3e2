import json
import math

import pytest
import torch

from rotaquant.data import JOIN, TextData
from rotaquant.eval.perplexity import perplexity
from tests.conftest import requires_default_model, tiny_model


def hand_ppl(model, windows):
    """exp(mean NLL) with an explicit loop and log_softmax, no shared code."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model(w[None]).logits[0].double(), dim=-1)
            for t in range(len(w) - 1):
                total -= logp[t, w[t + 1]].item()
                count += 1
    return math.exp(total / count)


def test_ppl_on_token_ids_equals_hand_computation():
    model = tiny_model("llama")
    ids = torch.randint(0, 96, (100,), generator=torch.Generator().manual_seed(0))
    res = perplexity(model, data=ids, seqlen=16, batch_size=3, progress=False)
    assert res.windows == 6 and res.tokens == 6 * 15
    expected = hand_ppl(model, ids[:96].view(6, 16))
    assert res.ppl == pytest.approx(expected, rel=1e-5)
    # batch size does not change the result
    res1 = perplexity(model, data=ids, seqlen=16, batch_size=1, progress=False)
    assert res1.ppl == pytest.approx(res.ppl, rel=1e-6)


def test_ppl_text_path_and_json(byte_tokenizer):
    model = tiny_model("qwen2")
    data = TextData("toy", "test", ["hello world", "rotations spread outliers"] * 5, "mem")
    res = perplexity(model, byte_tokenizer, data, seqlen=20, max_windows=3, progress=False)
    ids = byte_tokenizer(data.text).input_ids[0]
    assert data.text.count(JOIN) == 9
    assert res.ppl == pytest.approx(hand_ppl(model, ids[:60].view(3, 20)), rel=1e-5)
    blob = json.loads(res.to_json())
    assert {"ppl", "windows", "tokens", "seqlen", "dtype", "device", "seconds"} <= blob.keys()


def test_model_is_left_in_its_mode():
    model = tiny_model("llama").train()
    perplexity(model, data=torch.arange(64) % 96, seqlen=16, progress=False)
    assert model.training


@requires_default_model
def test_real_model_matches_plain_transformers(default_model):
    """rotaquant's PPL equals an independent plain-transformers computation (1e-3 relative)."""
    from rotaquant.data import load_text

    model, tok = default_model
    res = perplexity(model, tok, "wikitext2", "test", seqlen=512, max_windows=2, progress=False)
    text = "\n\n".join(load_text("wikitext2", "test").rows)
    ids = tok(text, return_tensors="pt").input_ids[:, : 2 * 512].view(2, 512)
    with torch.no_grad():
        losses = [model(w[None], labels=w[None]).loss.item() for w in ids]
    ref = math.exp(sum(losses) / len(losses))
    assert res.ppl == pytest.approx(ref, rel=1e-3)


def test_public_evaluate_verb(tmp_path):
    import rotaquant
    from tests.conftest import ByteTokenizer, tiny_model

    data = tmp_path / "t.txt"
    data.write_text("rotations spread outliers\n" * 80)
    out = rotaquant.evaluate(tiny_model("llama"), ByteTokenizer(), str(data), seqlen=64, max_windows=2, progress=False)
    assert out["perplexity"]["ppl"] > 1 and out["zeroshot"] is None


def test_cpu_evaluation_reports_no_graph():
    res = perplexity(tiny_model("llama"), data=torch.arange(96) % 96, seqlen=16, batch_size=2, progress=False)
    assert res.extra["cuda_graph"] == "off"


def test_cuda_graph_default_follows_stages(monkeypatch):
    """Without an explicit choice, graphs replay on CUDA for models that run rotaquant stages (their
    eager forward is host-bound) and not for plain ones; ROTAQUANT_CUDA_GRAPH and the argument win.
    (Decided from the device type, no GPU needed.)"""
    from rotaquant.eval.perplexity import GRAPH_ENV, _graph_wanted
    from rotaquant.quant.pipeline import quantize

    plain, staged = tiny_model("llama"), tiny_model("llama")
    quantize(staged, a_bits=4, preset="none", progress=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv(GRAPH_ENV, raising=False)
    assert _graph_wanted(None, cuda, 4, staged) and not _graph_wanted(None, cuda, 4, plain)
    assert not _graph_wanted(None, cpu, 4, staged) and not _graph_wanted(None, cuda, 1, staged)
    assert _graph_wanted(True, cuda, 4, plain) and not _graph_wanted(False, cuda, 4, staged)
    monkeypatch.setenv(GRAPH_ENV, "0")
    assert not _graph_wanted(None, cuda, 4, staged)
    monkeypatch.setenv(GRAPH_ENV, "1")
    assert _graph_wanted(None, cuda, 4, plain)


def test_capture_keeps_sdpa_causal_without_a_mask(monkeypatch):
    """During the graph capture (simulated on this CPU: the stream reports capturing) the forward
    pass still calls SDPA with ``is_causal`` and no mask, as eagerly; outside the context transformers
    builds the full mask when capturing (what the graphed evaluation paid for), and its helpers are
    restored after it."""
    from transformers import masking_utils

    from rotaquant.eval.perplexity import causal_mask_skip_in_capture

    model, ids = tiny_model("llama"), torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    expected = model(input_ids=ids, use_cache=False).logits
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    helpers = (masking_utils.is_tracing, masking_utils.find_packed_sequence_indices)
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append((k.get("attn_mask"), k.get("is_causal"))) or sdpa(*a, **k))
    model(input_ids=ids, use_cache=False)
    assert calls and all(m is not None and not c for m, c in calls)  # capturing: a full mask, no is_causal
    calls.clear()
    with causal_mask_skip_in_capture():
        assert not masking_utils.is_tracing() and masking_utils.is_tracing(torch.zeros(1)) is True
        logits = model(input_ids=ids, use_cache=False).logits
    assert (masking_utils.is_tracing, masking_utils.find_packed_sequence_indices) == helpers
    assert len(calls) == model.config.num_hidden_layers and all(m is None and c for m, c in calls)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_cuda_graph_replay_equals_eager(family):
    """The graphed evaluation of a rotated, W4A4KV4 fake-quantized fp16 model gives exactly the
    eager values (the same kernels run), with a remainder batch run eagerly."""
    from rotaquant.quant.pipeline import quantize
    from rotaquant.rotation.rotate import rotate

    model = tiny_model(family, dtype=torch.float16).cuda()
    rotate(model, seed=1, progress=False)
    quantize(model, w_bits=4, a_bits=4, k_bits=4, v_bits=4, a_asym=True, k_asym=True, v_asym=True,
             preset="none", progress=False)
    ids = torch.randint(0, 96, (7 * 32,), generator=torch.Generator().manual_seed(3))
    eager = perplexity(model, data=ids, seqlen=32, batch_size=2, progress=False, cuda_graph=False)
    graphed = perplexity(model, data=ids, seqlen=32, batch_size=2, progress=False, cuda_graph=True)
    assert eager.extra["cuda_graph"] == "off" and graphed.extra["cuda_graph"] == "on"
    assert graphed.ppl == eager.ppl and graphed.windows == 7

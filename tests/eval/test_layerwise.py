import copy
import math

import pytest
import torch

import rotaquant
from rotaquant.eval.layerwise import (
    LAYER,
    LOGITS,
    compare_layers,
    compare_logits,
    compare_weights,
    compared_modules,
    cosine,
    mse,
)
from tests.conftest import tiny_model


def _windows(n=2, seqlen=12):
    return torch.randint(0, 96, (n, seqlen), generator=torch.Generator().manual_seed(0))


def test_cosine_and_mse_on_hand_made_tensors():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [2.0, 2.0], [0.0, 0.0]])
    # per token: orthogonal (0), parallel (1), both zero (1)
    assert cosine(a, b) == pytest.approx(2 / 3)
    assert cosine(a[:1], -a[:1]) == pytest.approx(-1.0)
    assert mse(a, b) == pytest.approx((1 + 4 + 1 + 1) / 6)
    # both are unchanged by an orthogonal map applied to both
    q, _ = torch.linalg.qr(torch.randn(2, 2, dtype=torch.float64))
    assert cosine(a.double() @ q, b.double() @ q) == pytest.approx(2 / 3)
    assert mse(a.double() @ q, b.double() @ q) == pytest.approx(7 / 6)


def _values(rows, metric):
    return [r.value for r in rows if r.metric == metric]


def test_identical_models_agree_exactly():
    model = tiny_model("llama")
    rows = compare_layers(model, copy.deepcopy(model), _windows(), "same")
    layers, names = 2, compared_modules(model.model.layers[0])
    assert {r.module for r in rows} == {*(n for n in names if n), LAYER, LOGITS}
    assert len(rows) == (layers * len(names) * 2 + 1) * 2
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in _values(rows, "cosine"))
    assert all(v == 0 for v in _values(rows, "mse"))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_rotated_reference_computes_the_original_function(family):
    ref = tiny_model(family, dtype=torch.float64)
    rot = copy.deepcopy(ref)
    rotaquant.rotate(rot, mode="hadamard", progress=False)
    res = compare_logits(ref, rot, _windows())
    assert res["cosine"] == pytest.approx(1.0, abs=1e-12) and res["mse"] < 1e-12


def test_quantized_model_departs_and_weights_are_compared():
    ref = tiny_model("llama")
    cand = copy.deepcopy(ref)
    rotaquant.quantize(cand, None, w_bits=4, a_bits=4, w_method="rtn", rotate=False, progress=False)
    rows = compare_layers(ref, cand, _windows(), "none", modes=("isolated",), logits=False)
    assert {r.mode for r in rows} == {"isolated"}
    assert max(_values(rows, "cosine")) < 1.0 and min(_values(rows, "mse")) > 0
    wrows = compare_weights(ref, cand, "none")
    assert len(wrows) == 2 * 7 * 2 and {r.mode for r in wrows} == {"weight"}
    assert all(0.8 < v < 1.0 for v in _values(wrows, "cosine"))
    acc = compare_layers(ref, cand, _windows(), "none")
    logit_cos = [r.value for r in acc if r.module == LOGITS and r.metric == "cosine"][0]
    assert not math.isnan(logit_cos) and logit_cos < 1.0
    # the first layer sees the same input in both modes
    first = {(r.module, r.mode): r.value for r in acc if r.layer == 0 and r.metric == "cosine"}
    assert first[(LAYER, "isolated")] == pytest.approx(first[(LAYER, "accumulated")])


def test_unknown_mode_is_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="modes"):
        compare_layers(model, model, _windows(), "x", modes=("sideways",))

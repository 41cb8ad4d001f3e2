"""Both symmetric grids export exactly: the stored codes and scales are the weights, the side file
holds the dynamic quantizers' grid; the restricted grid is named as what compressed-tensors'
dynamic quantizer does not compute."""

import json

import pytest
import torch

import rotaquant
from rotaquant.export.reload import load_quantized
from tests.conftest import tiny_model

pytest.importorskip("compressed_tensors")

RECIPE = {"preset": "none", "w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4, "w_method": "rtn",
          "rotation_mode": "hadamard"}


@pytest.mark.parametrize("grid", ["restricted", "full"])
def test_round_trip_on_each_grid(tmp_path, grid):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = tiny_model("llama", seed=0)
    rotaquant.quantize(model, {**RECIPE, "sym_grid": grid}, progress=False)
    codes = torch.cat([m.rq_weight.codes.flatten() for m in model.modules() if hasattr(m, "rq_weight")])
    assert (int(codes.min()) == -8) == (grid == "full")  # the full grid uses the 16th code
    out = tmp_path / "q"
    rotaquant.export(model, None, out)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        back, _ = load_quantized(out, kernel="reference")
        assert torch.equal(back(ids).logits, ref)
    ct = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                              quantization_config=CompressedTensorsConfig(dequantize=True))
    theirs = dict(ct.named_modules())
    for name, module in model.named_modules():
        if hasattr(module, "rq_weight"):
            assert torch.equal(theirs[name].weight.detach(), module.weight.detach()), name
    notes = json.loads((out / "rotaquant_stages.json").read_text())["not_expressed_by_compressed_tensors"]
    restricted = [n for n in notes if "restricted grid" in n]
    assert bool(restricted) == (grid == "restricted")

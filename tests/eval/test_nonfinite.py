"""Non-finite logits are a named error that names the first module with a non-finite output."""

from __future__ import annotations

import pytest
import torch

from rotaquant.cli import main
from rotaquant.errors import NonFiniteError
from rotaquant.eval.perplexity import first_non_finite_module, perplexity
from tests.conftest import ByteTokenizer, tiny_model


def nan_model(module: str = "model.layers.1.mlp.down_proj"):
    model = tiny_model("llama")
    with torch.no_grad():
        model.get_submodule(module).weight[0, 0] = float("nan")
    return model


def test_nan_weights_name_the_first_non_finite_module():
    model = nan_model()
    ids = torch.randint(0, 96, (64,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteError, match=r"model\.layers\.1\.mlp\.down_proj \(Linear\)"):
        perplexity(model, data=ids, seqlen=32, progress=False)
    assert first_non_finite_module(tiny_model("llama"), ids[:32].view(1, -1)) is None
    # the hooks of the re-run are gone
    assert all(not m._forward_hooks for m in model.modules())


def test_nan_eval_exits_2_and_writes_no_json(tmp_path, monkeypatch, capsys):
    import rotaquant.jobs.eval as ev

    monkeypatch.setattr(ev, "load_model", lambda *a, **k: (nan_model("model.layers.0.self_attn.v_proj"), ByteTokenizer()))
    data = tmp_path / "t.txt"
    data.write_text("some text to evaluate\n" * 30)
    out = tmp_path / "r.json"
    code = main(["eval", "-q", "--data", str(data), "--seqlen", "32", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "model.layers.0.self_attn.v_proj" in err and "Traceback" not in err
    assert not out.exists()

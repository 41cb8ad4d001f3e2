import csv
import importlib.util
import io

import pytest
import torch

from rotaquant.errors import ConfigError, RotaquantError
from rotaquant.eval.analyze import AnalyzeConfig, analyze, input_sites
from rotaquant.eval.layerwise import LAYER, compared_modules
from rotaquant.jobs.analyze import write_analysis
from tests.conftest import tiny_model


def _windows(n=2, seqlen=16):
    return torch.randint(0, 96, (n, seqlen), generator=torch.Generator().manual_seed(0))


def _cfg(**kw):
    base = dict(model="tiny", methods=["none", "quarot", "smoothquant"], w_bits=4, a_bits=4, k_bits=4,
                v_bits=4, nsamples=2, seqlen=16, plot_layers=[1])
    return AnalyzeConfig(**{**base, **kw})


def test_config_refuses_unknown_methods_and_recipe_keys():
    with pytest.raises(ConfigError, match="methods"):
        AnalyzeConfig.load(None, methods=["quarot", "gptq-magic"])
    with pytest.raises(Exception, match="w_bitz"):
        AnalyzeConfig.load(None, recipe={"w_bitz": 3})


def test_analysis_rows_files_and_fp_agreement(tmp_path):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plots = importlib.util.find_spec("matplotlib") is not None  # the `plot` extra
    cfg = _cfg(plots=plots)
    res = analyze(model, _windows(), cfg, progress=False)
    for k, v in model.state_dict().items():  # the input model is not mutated
        assert torch.equal(v, before[k]), k
    assert input_sites(model) == ["self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"]
    names = compared_modules(model.model.layers[0])
    for method in cfg.methods:
        mine = [r for r in res.rows if r.method == method]
        outputs = [r for r in mine if r.mode in ("isolated", "accumulated")]
        assert len(outputs) == (2 * len(names) * 2 + 1) * 2  # layers x modules x modes + logits, x metrics
        assert len([r for r in mine if r.mode == "weight"]) == 2 * 7 * 2
        assert len([r for r in mine if r.mode == "activation"]) == 2 * 4 * 3
        assert all(r.value < 1.0 for r in outputs if r.metric == "cosine" and r.module == LAYER)
    # the processed full-precision references compute the FP function (float32 rounding only)
    fp = [r for r in res.rows if r.mode == "processed_fp" and r.metric == "cosine"]
    assert {r.method for r in fp} == {"quarot", "smoothquant"}
    assert all(r.value > 1 - 1e-5 for r in fp)

    out = write_analysis(res, cfg, tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    pngs = ["channel_magnitude_layer1.png", "kurtosis.png", "cosine.png"] if plots else []
    assert out["files"] == sorted(["analysis.csv", "analysis.json", "summary.txt", "side_by_side.md", *pngs])
    assert set(out["files"]) <= set(files)
    table = list(csv.DictReader(io.StringIO((tmp_path / "out" / "analysis.csv").read_text())))
    assert list(table[0]) == ["method", "layer", "module", "mode", "metric", "value"]
    assert len(table) == len(res.rows)
    for png in pngs:
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "quarot" in summary and "cosine < 0.95" in summary
    with pytest.raises((FileExistsError, RotaquantError)):  # no silent overwrite
        write_analysis(res, cfg, tmp_path / "out")


def test_identical_processing_without_quantization_gives_cosine_one():
    model = tiny_model("llama")
    cfg = _cfg(methods=["none", "quarot"], w_bits=16, a_bits=16, k_bits=16, v_bits=16, plots=False)
    res = analyze(model, _windows(), cfg, progress=False)
    cos = [r.value for r in res.rows if r.metric == "cosine" and r.mode in ("isolated", "accumulated", "weight")]
    assert cos and all(v == pytest.approx(1.0, abs=1e-9) for v in cos)


def test_cli_flags_map_onto_the_config():
    from rotaquant.cli import build_parser
    from rotaquant.cli_flags import config_overrides

    args = build_parser().parse_args(
        ["analyze", "--model", "m", "--methods", "none,smoothquant", "--w-bits", "4", "--a-bits", "8",
         "--nsamples", "2", "--seqlen", "64", "--threshold", "0.9", "--plot-layers", "0,3", "--output", "o"])
    over = config_overrides(args, AnalyzeConfig)
    assert over == {"model": "m", "methods": ["none", "smoothquant"], "w_bits": 4, "a_bits": 8, "nsamples": 2,
                    "seqlen": 64, "threshold": 0.9, "plot_layers": [0, 3]}
    cfg = AnalyzeConfig.load(None, **over)
    assert cfg.quant_overrides()["rotate"] is False and cfg.k_bits == 4

"""The PTQ pipeline on tiny models: KV/activation hooks applied, recipe <-> CLI, bad input."""

import json

import pytest
import torch
import yaml

from rotaquant.cli import build_parser, main
from rotaquant.cli_flags import config_overrides
from rotaquant.errors import ConfigError
from rotaquant.quant.gptq import NonFiniteActivationError
from rotaquant.quant.pipeline import load_recipe, quantize
from rotaquant.quant.recipe import PTQRecipe
from rotaquant.rotation.rotate import rotate
from rotaquant.stages import remove_stages, stage_map
from tests.conftest import ByteTokenizer, tiny_model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(0))


def test_kv_quantizer_runs_inside_attention_after_r3():
    model = tiny_model("llama")
    rotate(model, progress=False)
    quantize(model, k_bits=2, v_bits=2, progress=False)
    sites = stage_map(model)
    assert sites["model.layers.0.self_attn:key"] == ["r3", "k_quant"]  # keys: R3 first, then quantized
    assert sites["model.layers.0.self_attn:value"] == ["v_quant"]
    seen = []
    kq = model.model.layers[0].self_attn.rq_attention.key.stages["k_quant"]
    kq.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    model(IDS)
    assert seen and seen[0][-1] == 16  # called with [batch, kv_heads, seq, head_dim]


def test_kv_quantization_changes_the_output_and_bypassing_it_restores_it():
    """Fails if the K/V quantizer is bypassed: 2-bit KV must change the logits."""
    model = tiny_model("llama")
    ref = logits(model, IDS)
    quantize(model, k_bits=2, v_bits=2, rotate=False, progress=False)
    assert model.config._attn_implementation == "rotaquant_sdpa"
    quantized = logits(model, IDS)
    assert not torch.allclose(quantized, ref, atol=1e-3)
    assert remove_stages(model, ["k_quant", "v_quant"]) == 4
    torch.testing.assert_close(logits(model, IDS), ref)
    assert model.config._attn_implementation == "sdpa"


def test_activation_quantizers_hook_every_linear_but_lm_head():
    model = tiny_model("llama")
    state = quantize(model, a_bits=4, rotate=False, progress=False)
    assert state.act_quantizers == 2 * 7  # q,k,v,o,gate,up,down per layer; lm_head skipped
    out = logits(model, IDS)
    assert remove_stages(model, "a_quant") == 14
    assert not torch.allclose(out, logits(model, IDS), atol=1e-4)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_weights_are_quantized_on_the_grid(method):
    model = tiny_model("llama")
    calib = torch.randint(0, 96, (8, 32), generator=torch.Generator().manual_seed(1))
    before = model.lm_head.weight.clone()
    quantize(model, w_bits=3, w_method=method, calibration=calib, preset="none", rotate=False, progress=False)
    w = model.model.layers[1].mlp.down_proj.weight
    assert all(len(torch.unique(row)) <= 8 for row in w)  # 3 bits, symmetric per channel
    assert torch.equal(model.lm_head.weight, before)  # lm_head left in full precision


def test_rotation_helps_w4a4kv4_on_outlier_model():
    """A tiny model with a planted outlier channel: rotation must cut the quantization error."""
    def build():
        m = tiny_model("llama", seed=3)
        with torch.no_grad():
            m.model.embed_tokens.weight[:, 5] *= 40
        return m

    ref = logits(build(), IDS)
    plain, rotated = build(), build()
    quantize(plain, w_bits=4, a_bits=4, k_bits=4, v_bits=4, preset="none", rotate=False, progress=False)
    rotate(rotated, progress=False)
    quantize(rotated, w_bits=4, a_bits=4, k_bits=4, v_bits=4, preset="none", progress=False)
    err_plain = (logits(plain, IDS) - ref).pow(2).mean()
    err_rot = (logits(rotated, IDS) - ref).pow(2).mean()
    assert err_rot < err_plain


def test_cli_flags_equal_yaml_recipe(tmp_path):
    argv = ["ptq", "--w-bits", "4", "--a-bits", "4", "--k-bits", "4", "--v-bits", "8", "--w-groupsize", "32",
            "--a-asym", "--k-asym", "--w-clip", "--a-clip-ratio", "0.9", "--k-clip-ratio", "0.95", "--gptq",
            "--no-rotate", "--nsamples", "16", "--seqlen", "256", "--seed", "3", "--max-windows", "2",
            "--batch-size", "2", "--device", "cpu", "--dtype", "bf16", "--percdamp", "0.05", "--act-order"]
    from_flags = load_recipe(None, **config_overrides(build_parser().parse_args(argv), PTQRecipe))
    recipe = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 8, "w_groupsize": 32, "a_asym": True,
              "k_asym": True, "w_clip": True, "a_clip_ratio": 0.9, "k_clip_ratio": 0.95, "w_method": "gptq",
              "rotate": False, "nsamples": 16, "seqlen": 256, "cal_seqlen": 256, "seed": 3, "max_windows": 2,
              "batch_size": 2, "device": "cpu", "dtype": "bf16", "gptq_damp": 0.05, "gptq_act_order": True}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert from_flags == load_recipe(path)
    # a recipe file plus flags: flags win
    args = build_parser().parse_args(["ptq", "--recipe", str(path), "--w-bits", "3"])
    mixed = load_recipe(args.recipe, **config_overrides(args, PTQRecipe))
    assert mixed.w_bits == 3 and mixed.v_bits == 8


@pytest.mark.parametrize("bad", [{"w_bits": 1}, {"a_bits": 9}, {"k_bits": 0}, {"w_method": "awq"},
                                 {"a_clip_ratio": 1.5}, {"w_bit": 4}])
def test_bad_recipe_values_are_named_errors(bad):
    with pytest.raises(ConfigError):
        PTQRecipe.load(bad)


def test_group_size_not_dividing_leaves_model_untouched():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="does not divide"):
        quantize(model, w_bits=4, w_groupsize=24, a_bits=4, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ConfigError, match="head_dim"):
        quantize(model, k_bits=4, k_groupsize=5, progress=False)


def test_nan_calibration_is_a_named_error_and_nothing_is_written(tmp_path, monkeypatch):
    import rotaquant.jobs.ptq as job

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[7] = float("nan")
    monkeypatch.setattr(job, "load_model", lambda *a, **k: (model, ByteTokenizer()))
    calib = torch.full((2, 16), 7)
    with pytest.raises(NonFiniteActivationError):
        quantize(model, w_bits=4, w_method="gptq", calibration=calib, rotate=False, progress=False)
    out = tmp_path / "r.json"
    data = tmp_path / "t.txt"
    data.write_text("\x07" * 400)  # byte 7 -> token 7 -> NaN embedding
    code = main(["ptq", "--w-bits", "4", "--gptq", "--no-rotate", "--cal-data", str(data), "--data", str(data),
                 "--seqlen", "16", "--nsamples", "2", "--json", str(out), "-q"])
    assert code == 2 and not out.exists()


def test_ptq_cli_writes_json_with_ppl(tmp_path, monkeypatch):
    import rotaquant.jobs.ptq as job

    monkeypatch.setattr(job, "load_model", lambda *a, **k: (tiny_model("llama"), ByteTokenizer()))
    data = tmp_path / "t.txt"
    data.write_text("rotations spread outliers\n" * 80)
    out = tmp_path / "r.json"
    assert main(["ptq", "--preset", "none", "--w-bits", "4", "--a-bits", "8", "--k-bits", "8", "--v-bits", "8", "--data", str(data),
                 "--seqlen", "64", "--max-windows", "2", "--json", str(out), "-q"]) == 0
    blob = json.loads(out.read_text())
    assert blob["ppl"] > 1 and blob["recipe"]["w_bits"] == 4 and blob["rotation"]["online_stages"] == 4


def test_ptq_runs_zero_shot_tasks_from_the_recipe(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import rotaquant.jobs.ptq as job
    from tests.conftest import tiny_model as build

    class Tok(ByteTokenizer):  # also the plain-list form the zero-shot encoder asks for
        def __call__(self, text, return_tensors=None, add_special_tokens=True):
            if return_tensors == "pt":
                return super().__call__(text)
            return SimpleNamespace(input_ids=[b % self.vocab_size for b in text.encode()])

    monkeypatch.setattr(job, "load_model", lambda *a, **k: (build("llama"), Tok()))
    data = tmp_path / "t.txt"
    data.write_text("rotations spread outliers\n" * 80)
    out = tmp_path / "r.json"
    zs = tmp_path / "zeroshot" / "piqa"
    zs.mkdir(parents=True)
    (zs / "valid.jsonl").write_text('{"goal": "open a jar", "sol1": "twist the lid", "sol2": "eat the lid"}\n' * 3)
    (zs / "valid-labels.lst").write_text("0\n0\n0\n")
    assert main(["ptq", "--preset", "none", "--a-bits", "8", "--data", str(data), "--data-dir", str(tmp_path),
                 "--seqlen", "64", "--max-windows", "1", "--tasks", "piqa", "--task-limit", "2",
                 "--json", str(out), "-q"]) == 0
    blob = json.loads(out.read_text())
    assert "piqa" in json.dumps(blob["zeroshot"]) and "piqa" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown zero-shot"):
        PTQRecipe.load({"tasks": "piqa,nope"})


def test_presets_fill_only_what_is_not_given():
    auto = PTQRecipe.load({"w_bits": 4, "a_bits": 4})
    assert auto.preset == "auto" and auto.w_method == "gptq" and auto.gptq_v2 and auto.a_asym
    assert auto.o_proj_input == "per_head" and auto.w_clip
    assert PTQRecipe.load({}).w_method == "rtn"  # nothing quantized: no preset values
    quarot = PTQRecipe.load({"preset": "quarot", "w_bits": 4, "a_bits": 4, "a_clip_ratio": 0.8})
    assert quarot.a_clip_ratio == 0.8 and quarot.k_clip_ratio == 0.95 and quarot.o_proj_input == "mixed"
    assert quarot.rotation_mode == {"r1": "hadamard", "r2": "base_hadamard"} and not quarot.gptq_v2
    plain = PTQRecipe.load({"preset": "none", "w_bits": 4})
    assert plain.w_method == "rtn" and not plain.a_asym and not plain.w_clip
    assert PTQRecipe.load(plain.to_dict()) == plain  # a saved recipe reloads as it was


def test_smoothquant_in_the_recipe():
    calib = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(4))
    model = tiny_model("llama")
    norm_before = model.model.layers[0].input_layernorm.weight.clone()
    ref = logits(model, IDS)
    state = quantize(model, a_bits=8, preset="none", rotate=False, smoothquant_alpha=0.5, calibration=calib,
                     progress=False)
    assert state.smoothing and not torch.equal(model.model.layers[0].input_layernorm.weight, norm_before)
    assert (logits(model, IDS) - ref).abs().max() < 0.5  # smoothed + A8: close to the original
    with pytest.raises(ConfigError, match="rotate"):
        PTQRecipe.load({"smoothquant_alpha": 0.5})  # rotate defaults to true
    with pytest.raises(ConfigError):
        PTQRecipe.load({"smoothquant_alpha": 1.5, "rotate": False})

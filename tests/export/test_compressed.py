"""compressed-tensors export -> reload: same logits, compressed-tensors reads the same weights,
atomic writes, named errors."""

import json
import shutil

import pytest
import torch

import rotaquant
from rotaquant.errors import ConfigError, ModelLoadError
from rotaquant.export.compressed import export_quantized
from rotaquant.export.reload import is_quantized_export, load_quantized
from rotaquant.models.loading import load_model
from rotaquant.quant.qlinear import QuantLinear
from rotaquant.stages import stage_map
from tests.conftest import tiny_model

pytest.importorskip("compressed_tensors")

WIDE = {"hidden_size": 128, "intermediate_size": 256, "head_dim": 32}  # room for groups of 128
SETTINGS = {
    "w4a16_g32": ({"w_bits": 4, "w_groupsize": 32}, {}),
    "w4a16_g128_asym": ({"w_bits": 4, "w_groupsize": 128, "w_asym": True}, WIDE),
    "w4a16_channel": ({"w_bits": 4}, {}),
    "w8a8": ({"w_bits": 8, "a_bits": 8}, {}),
    "w8a8_asym": ({"w_bits": 8, "a_bits": 8, "w_asym": True, "a_asym": True}, {}),
    # R1-R4 (random R1/R2 fused, R3 on queries/keys, R4 on down_proj), SpinQuant's grids
    "w4a4kv4_spinquant": ({"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4, "preset": "spinquant",
                           "w_method": "rtn", "rotation_mode": "hadamard"}, WIDE),
    # QuaRot's: heads mixed before o_proj (rh), symmetric activations clipped at 0.9
    "w4a4kv4_quarot": ({"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4, "preset": "quarot",
                        "w_method": "rtn"}, {}),
    # biases on q/k/v (Qwen2), asymmetric int4 weights through the int8 kernel
    "qwen2_w4a8kv4": ({"w_bits": 4, "a_bits": 8, "k_bits": 4, "v_bits": 4, "w_asym": True}, {"family": "qwen2"}),
    # FP8 e4m3 weights per channel, dynamic per-token FP8 activations (float-quantized)
    "fp8": ({"w_bits": 8, "a_bits": 8, "w_type": "float", "a_type": "float"}, {}),
    "fp8_kv4_spinquant": ({"w_bits": 8, "a_bits": 8, "w_type": "float", "a_type": "float", "k_bits": 4,
                           "v_bits": 4, "preset": "spinquant", "a_asym": False, "w_method": "rtn",
                           "rotation_mode": "hadamard"}, WIDE),
}


def quantized(name, seed=0, dtype=torch.float32):
    recipe, shape = SETTINGS[name]
    shape = dict(shape)
    model = tiny_model(shape.pop("family", "llama"), seed=seed, dtype=dtype, **shape)
    rotaquant.quantize(model, {"preset": "none", **recipe}, progress=False)
    return model


def ids_for(model, seed=1):
    return torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_round_trip_logits(tmp_path, name):
    model = quantized(name)
    out = tmp_path / "q"
    summary = rotaquant.export(model, None, out)
    assert is_quantized_export(out) and (out / "rotaquant-output.json").is_file()
    ids = ids_for(model)
    with torch.no_grad():
        ref = model(ids).logits
        exact, _ = load_quantized(out, kernel="reference")
        assert torch.equal(exact(ids).logits, ref), "the reference kernel is the fake-quantized model bit for bit"
        fast, _ = load_model(out, kernel="auto")
        got = fast(ids).logits
    # integer kernels accumulate in another order: a rare activation code on a rounding tie flips
    assert (got - ref).abs().max() <= 1e-3 * ref.abs().max()
    assert (got - ref).abs().mean() <= 1e-5 * ref.abs().max()
    kernels = {m.kernel for m in fast.modules() if isinstance(m, QuantLinear)}
    if name.startswith("w4a16"):
        assert kernels == {"int4mm"}
    if name.startswith("w8a8"):
        assert kernels == {"int8mm"}
    if name.startswith("fp8"):  # torch._scaled_mm needs CUDA sm89+: the reference path on CPU
        assert kernels == {"reference"}
    # every stage is back, except the input quantizers, which the QuantLinears now own
    want = {k: [s for s in v if not (k.endswith(":input") and s == "a_quant")] for k, v in stage_map(model).items()}
    assert stage_map(fast) == {k: v for k, v in want.items() if v}
    assert summary["quantized_linears"] == sum(isinstance(m, QuantLinear) for m in fast.modules())


def test_format_and_config(tmp_path):
    model = quantized("w4a4kv4_spinquant")
    rotaquant.export(model, None, tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["ignore"] == ["lm_head"]
    kinds = {g["input_activations"]["strategy"] for g in qc["config_groups"].values()}
    assert kinds == {"token", "group"}  # per token, and per head at o_proj
    assert qc["kv_cache_scheme"]["dynamic"] is True and qc["kv_cache_scheme"]["group_size"] == model.config.head_dim
    tc = qc["transform_config"]["config_groups"]
    locations = {a["location"] for g in tc.values() for a in g["apply"]}
    assert {"input", "weight_input", "q_attn", "k_cache"} <= locations
    side = json.loads((tmp_path / "q" / "rotaquant_stages.json").read_text())
    assert side["not_expressed_by_compressed_tensors"]  # random signs etc. are said


@pytest.mark.parametrize("name", ["w4a16_g32", "w4a16_g128_asym", "w4a16_channel", "w8a8_asym", "w4a4kv4_spinquant",
                                  "fp8"])
def test_compressed_tensors_loader_reads_same_weights(tmp_path, name):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = quantized(name)
    rotaquant.export(model, None, tmp_path / "q")
    ct = AutoModelForCausalLM.from_pretrained(tmp_path / "q", dtype=torch.float32,
                                              quantization_config=CompressedTensorsConfig(dequantize=True))
    theirs = dict(ct.named_modules())
    count = 0
    for name_, module in model.named_modules():
        if hasattr(module, "rq_weight"):
            assert torch.equal(theirs[name_].weight.detach(), module.weight.detach()), name_
            count += 1
    assert count > 0


def test_fp8_format_and_codes(tmp_path):
    from safetensors import safe_open

    model = quantized("fp8")
    rotaquant.export(model, None, tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "float-quantized"
    (group,) = qc["config_groups"].values()
    assert group["weights"]["type"] == "float" and group["weights"]["num_bits"] == 8
    assert group["weights"]["strategy"] == "channel"
    assert group["input_activations"]["type"] == "float" and group["input_activations"]["dynamic"] is True
    assert group["input_activations"]["strategy"] == "token"
    with safe_open(str(tmp_path / "q" / "model.safetensors"), framework="pt") as f:
        w = f.get_tensor("model.layers.0.mlp.down_proj.weight")
        s = f.get_tensor("model.layers.0.mlp.down_proj.weight_scale")
    rec = model.get_submodule("model.layers.0.mlp.down_proj").rq_weight
    assert w.dtype == torch.float8_e4m3fn and s.shape == (w.shape[0], 1)
    assert torch.equal(w.float() * s, model.get_submodule("model.layers.0.mlp.down_proj").weight.detach())
    assert torch.equal(w.float(), rec.codes.float()) and w.float().abs().max() <= 448


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    import rotaquant.export.compressed as compressed

    model = quantized("w4a16_g32")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compressed, "write_side_file", boom)
    with pytest.raises(KeyboardInterrupt):
        export_quantized(model, None, tmp_path / "q")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary left behind


def test_not_an_export_and_plain_folders(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "plain")
    assert not is_quantized_export(tmp_path / "plain")
    with pytest.raises(ModelLoadError, match="not a rotaquant quantized export"):
        load_quantized(tmp_path / "plain")
    with pytest.raises(ConfigError, match="no quantized weights"):
        export_quantized(model, None, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def _tamper(folder, edit):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg["quantization_config"])
    path.write_text(json.dumps(cfg))


def test_tampered_configs_are_named(tmp_path):
    model = quantized("w4a16_g32")
    src = tmp_path / "q"
    rotaquant.export(model, None, src)

    bad = tmp_path / "group"
    shutil.copytree(src, bad)
    _tamper(bad, lambda qc: qc["config_groups"]["group_0"]["weights"].update(group_size=16))
    with pytest.raises(ModelLoadError, match="config"):
        load_model(bad)

    bad = tmp_path / "invalid"
    shutil.copytree(src, bad)
    _tamper(bad, lambda qc: qc["config_groups"]["group_0"]["weights"].update(num_bits="four"))
    with pytest.raises(ModelLoadError, match="not a valid compressed-tensors config"):
        load_model(bad)

    bad = tmp_path / "fewer"
    shutil.copytree(src, bad)
    _tamper(bad, lambda qc: qc["ignore"].append("model.layers.0.mlp.down_proj"))
    with pytest.raises(ModelLoadError, match="side file"):
        load_model(bad)

    bad = tmp_path / "stripped"
    shutil.copytree(src, bad)
    (bad / "rotaquant_stages.json").unlink()
    with pytest.raises(ModelLoadError, match="declares online transforms"):
        load_model(bad)


def test_without_transform_weights(tmp_path):
    from safetensors import safe_open

    model = quantized("w4a4kv4_quarot")
    rotaquant.export(model, None, tmp_path / "q", transform_weights=False)
    with safe_open(str(tmp_path / "q" / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if k.endswith(("_input.weight", "_q_attn.weight", "_k_cache.weight"))]
    ids = ids_for(model)
    with torch.no_grad():
        again, _ = load_model(tmp_path / "q", kernel="reference")
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    model = quantized("w4a16_g32")
    rotaquant.export(model, None, tmp_path / "q")
    path = tmp_path / "q" / "model.safetensors"
    state = load_file(path)
    del state["model.layers.1.mlp.up_proj.weight_scale"]
    save_file(state, path)
    with pytest.raises(ModelLoadError, match="up_proj"):
        load_model(tmp_path / "q")


def test_bf16_export_reloads_in_bf16(tmp_path):
    model = quantized("w4a4kv4_quarot", dtype=torch.bfloat16)
    rotaquant.export(model, None, tmp_path / "q")
    ids = ids_for(model)
    with torch.no_grad():
        ref = model(ids).logits
        again, _ = load_model(tmp_path / "q", dtype="bf16", kernel="reference")
        assert torch.equal(again(ids).logits, ref)


def test_missing_package_is_named(tmp_path, monkeypatch):
    import importlib.util

    model = quantized("w4a16_g32")
    rotaquant.export(model, None, tmp_path / "q")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "compressed_tensors" else real(name, *a))
    with pytest.raises(ConfigError, match="rotaquant\\[export\\]"):
        export_quantized(model, None, tmp_path / "again")
    with pytest.raises(ModelLoadError, match="compressed-tensors"):
        load_model(tmp_path / "q")


def test_large_checkpoints_are_sharded_with_an_index(tmp_path):
    """Above max_shard_bytes the tensors go to numbered shards plus transformers' index; rotaquant
    and compressed-tensors' loader read them as they read one file."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = quantized("w4a4kv4_spinquant")
    rotaquant.export(model, None, tmp_path / "one")
    rotaquant.export(model, None, tmp_path / "q", max_shard_bytes=64 * 1024)
    shards = sorted(p.name for p in (tmp_path / "q").glob("model-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "q" / "model.safetensors").exists()
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not list((tmp_path / "q").glob(".part-*"))
    index = json.loads((tmp_path / "q" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    from safetensors import safe_open

    with safe_open(str(tmp_path / "one" / "model.safetensors"), framework="pt") as f:
        single = {k: f.get_tensor(k) for k in f.keys()}
    assert set(index["weight_map"]) == set(single)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())
    ids = ids_for(model)
    with torch.no_grad():
        want = model(ids).logits
        sharded, _ = load_quantized(tmp_path / "q", kernel="reference")
        assert torch.equal(sharded(ids).logits, want)  # the fake-quantized model bit for bit
    ct = AutoModelForCausalLM.from_pretrained(tmp_path / "q", dtype=torch.float32,
                                              quantization_config=CompressedTensorsConfig(dequantize=True))
    theirs = dict(ct.named_modules())
    for name, module in model.named_modules():
        if hasattr(module, "rq_weight"):
            assert torch.equal(theirs[name].weight.detach(), module.weight.detach()), name
    with pytest.raises(ConfigError, match="max_shard_bytes"):
        rotaquant.export(model, None, tmp_path / "bad", max_shard_bytes=0)


def test_damaged_or_missing_shards_are_named(tmp_path):
    model = quantized("w4a16_g32")
    rotaquant.export(model, None, tmp_path / "q", max_shard_bytes=64 * 1024)
    shards = sorted((tmp_path / "q").glob("model-*.safetensors"))
    data = shards[-1].read_bytes()
    shards[-1].write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=f"{shards[-1].name} is not a readable safetensors file"):
        load_quantized(tmp_path / "q")
    shards[-1].unlink()
    with pytest.raises(ModelLoadError, match=f"the shard {shards[-1].name} named by model.safetensors.index.json is "
                                             "missing"):
        load_quantized(tmp_path / "q")
    (tmp_path / "q" / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(ModelLoadError, match="is not a safetensors index"):
        load_quantized(tmp_path / "q")

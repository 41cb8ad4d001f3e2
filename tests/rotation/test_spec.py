import pytest
import torch
import yaml

from rotaquant.rotation.rotate import rotate
from rotaquant.rotation.spec import RotationConfigError, builtin_specs, load_spec, pattern_matches
from tests.conftest import tiny_model


def test_builtin_configs_load():
    assert {"llama", "qwen2", "qwen3", "mistral", "transformer_universal"} <= set(builtin_specs())
    for name in builtin_specs():
        spec = load_spec(name)
        assert "r1" in spec.rotation_matrices and spec.use_float64


def test_pipe_alternatives_and_globs():
    assert pattern_matches("*q_proj|*k_proj", "model.layers.0.self_attn.k_proj")
    assert not pattern_matches("*q_proj|*k_proj", "model.layers.0.self_attn.v_proj")


def write(tmp_path, data):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_typo_key_is_named(tmp_path):
    data = load_spec("llama").model_dump()
    data["rotation_matrice"] = data.pop("rotation_matrices")
    with pytest.raises(RotationConfigError, match="rotation_matrice.*unknown key"):
        load_spec(write(tmp_path, data))


def test_typo_in_matrix_spec(tmp_path):
    data = load_spec("llama").model_dump()
    data["rotation_matrices"]["r1"]["per_layr"] = True
    with pytest.raises(RotationConfigError, match="per_layr"):
        load_spec(data)


def test_pattern_matching_nothing_is_skipped_unless_strict(caplog):
    data = load_spec("llama").model_dump()
    data["rotation_config"]["*qq_proj"] = ["r1", None]
    with caplog.at_level("DEBUG", logger="rotaquant.rotation.apply"):
        rotate(tiny_model("llama"), data, progress=False)
    assert "*qq_proj" in caplog.text
    data["strict_patterns"] = True
    with pytest.raises(RotationConfigError, match=r"\*qq_proj.*match no module"):
        rotate(tiny_model("llama"), data, progress=False)


MODELOPT_UNIVERSAL = """
# Universal transformer rotation configuration

rotation_matrices:
  r1:
    dim: "hidden_size"
    mode: hadamard
    per_layer: false
  r2:
    dim: "head_dim"
    mode: hadamard
    per_layer: true

rotation_config:
  "*embed_tokens": [r1, null]
  "*lm_head": [r1, null]
  "*q_proj|*k_proj": [r1, null]
  "*v_proj": [r1, r2]
  "*o_proj": [r2, r1]
  "*up_proj|*gate_proj|*w1|*w3": [r1, null]
  "*down_proj|*w2": [null, r1]
  "*in_proj": [r1, null]
  "*out_proj": [null, r1]

norm_fuse_config:
  decoder_layer_fuse:
    - [input_layernorm, [self_attn.q_proj, self_attn.k_proj, self_attn.v_proj]]
    - [post_attention_layernorm, [mlp.up_proj, mlp.gate_proj]]
  lm_head_fuse:
    - [model.norm, lm_head]

use_float64: true
"""


def test_modelopt_universal_yaml_is_accepted_verbatim(tmp_path):
    """NVIDIA ModelOpt's own transformer_universal file, as published, on a Llama (Mamba's
    *in_proj/*out_proj match nothing there) preserves the function."""
    import torch

    path = tmp_path / "transformer_universal.yaml"
    path.write_text(MODELOPT_UNIVERSAL)
    model = tiny_model("llama", dtype=torch.float64)
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
        rotate(model, str(path), progress=False)
        out = model(ids).logits
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-6


def test_missing_dim_key_lists_the_keys():
    data = load_spec("llama").model_dump()
    data["rotation_matrices"]["r1"]["dim"] = "hidden_sise"
    with pytest.raises(RotationConfigError, match="hidden_sise.*hidden_size"):
        rotate(tiny_model("llama"), data, progress=False)


def test_undefined_matrix_name_and_bad_mode():
    data = load_spec("llama").model_dump()
    data["rotation_config"]["*v_proj"] = ["r1", "r9"]
    with pytest.raises(RotationConfigError, match="r9"):
        load_spec(data)
    data = load_spec("llama").model_dump()
    data["rotation_matrices"]["r1"]["mode"] = "fourier"
    with pytest.raises(RotationConfigError, match="fourier"):
        load_spec(data)


def test_unknown_config_name_lists_builtins():
    with pytest.raises(RotationConfigError, match="transformer_universal"):
        load_spec("llama4-turbo")


def test_per_layer_regex_groups(tmp_path):
    """per_layer as a regex: layers 0 and 1 share one R2 when the pattern ignores the index."""
    data = load_spec("llama").model_dump()
    data["rotation_matrices"]["r2"]["per_layer"] = r"self_attn"
    model = tiny_model("llama", dtype=torch.float64)
    ids = torch.randint(0, 96, (1, 10))
    with torch.no_grad():
        ref = model(ids).logits
    state = rotate(model, data, progress=False)
    groups = {g for (n, g) in state.store.matrices if n == "r2"}
    assert groups == {"self_attn"}
    with torch.no_grad():
        assert ((model(ids).logits - ref).abs().max() / ref.abs().max()) < 1e-6


def test_layernorm_with_bias_is_refused():
    model = tiny_model("llama")
    ln = torch.nn.LayerNorm(64)
    model.model.layers[0].input_layernorm = ln
    with pytest.raises(RotationConfigError, match="mean"):
        rotate(model, progress=False)


def test_specs_share_the_strict_model_style_of_the_job_configs(tmp_path):
    """One config base: rotation and architecture specs are StrictModels like the job configs,
    so they forbid unknown keys, validate on assignment and report errors through one formatter."""
    from rotaquant.config import StrictModel
    from rotaquant.models.architecture import ArchitectureSpec
    from rotaquant.rotation.spec import MatrixSpec, NormFuseConfig, RotationSpec

    for cls in (RotationSpec, MatrixSpec, NormFuseConfig, ArchitectureSpec):
        assert issubclass(cls, StrictModel), cls
    spec = load_spec("llama")
    with pytest.raises(ValueError, match="use_float64"):
        spec.use_float64 = "sometimes"
    with pytest.raises(ValueError, match="unknown mode 'sylvester'"):
        spec.rotation_matrices["r1"].mode = "sylvester"
    data = load_spec("llama").model_dump()
    data["architecture"]["q_projection"] = "q"
    with pytest.raises(RotationConfigError, match=r"\(dict\):\n  architecture.q_projection: unknown key \(check the spelling\)"):
        load_spec(data)


def test_non_utf8_rotation_file_is_a_named_error(tmp_path):
    path = tmp_path / "rot.yaml"
    path.write_bytes(b"rotation_matrices:\n  r1: {dim: hidden_size, mode: \xff\xfe}\n")
    with pytest.raises(RotationConfigError, match="not UTF-8 text"):
        load_spec(path)

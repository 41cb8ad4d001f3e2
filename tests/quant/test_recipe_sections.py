"""The nested recipe {model, rotation, quant, calibration, eval, output}: the same recipe as the flat
one, in YAML and in Python; a misplaced, misspelt or doubled key is a named error."""

from __future__ import annotations

import pytest
import torch
import yaml

import rotaquant
from rotaquant.config import (
    CalibrationConfig,
    EvaluateConfig,
    ModelConfig,
    OutputConfig,
    RotationConfig,
)
from rotaquant.errors import ConfigError
from rotaquant.quant.recipe import SECTIONS, PTQRecipe, QuantConfig, section_of
from tests.conftest import ByteTokenizer, tiny_model

FLAT = {"model": "tiny", "dtype": "float64", "rotation_mode": "orthogonal", "seed": 3, "w_bits": 4, "a_bits": 8,
        "w_method": "gptq", "nsamples": 16, "cal_split": "validation", "seqlen": 256, "max_windows": 2,
        "output": "out-dir", "overwrite": True}
NESTED = {"model": {"model": "tiny", "dtype": "float64"}, "rotation": {"rotation_mode": "orthogonal", "seed": 3},
          "quant": {"w_bits": 4, "a_bits": 8, "w_method": "gptq"},
          "calibration": {"nsamples": 16, "cal_split": "validation"}, "eval": {"seqlen": 256, "max_windows": 2},
          "output": {"output": "out-dir", "overwrite": True}}


def test_flat_nested_yaml_and_python_are_the_same_recipe(tmp_path):
    flat_yaml, nested_yaml = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat_yaml.write_text(yaml.safe_dump(FLAT))
    nested_yaml.write_text(yaml.safe_dump(NESTED))
    python = PTQRecipe(model=ModelConfig(model="tiny", dtype="float64"),
                       rotation=RotationConfig(rotation_mode="orthogonal", seed=3),
                       quant=QuantConfig(w_bits=4, a_bits=8, w_method="gptq"),
                       calibration=CalibrationConfig(nsamples=16, cal_split="validation"),
                       eval=EvaluateConfig(seqlen=256, max_windows=2), output=OutputConfig(output="out-dir", overwrite=True))
    flat = PTQRecipe.load(flat_yaml)
    assert PTQRecipe.load(nested_yaml) == flat == python == PTQRecipe(**FLAT)
    assert flat.cal_seqlen == 256  # eval.seqlen still flows to the calibration windows
    assert flat.gptq_v2  # the auto preset applies to nested keys as to flat ones


def test_nested_form_round_trips_and_every_key_has_one_section():
    rec = PTQRecipe(**FLAT)
    nested = rec.nested()
    assert list(nested) == ["version", *SECTIONS]
    assert PTQRecipe(**nested) == rec
    keys = [k for body in list(nested.values())[1:] for k in body]
    assert sorted(keys) == sorted(k for k in PTQRecipe.model_fields if k != "version")
    assert rec.section("rotation") == RotationConfig(rotation_mode="orthogonal", seed=3)
    assert section_of("gptq_damp") == "quant" and section_of("cal_data") == "calibration"


def test_flags_override_a_nested_recipe_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(NESTED))
    assert PTQRecipe.load(path, w_bits=8, seed=5).w_bits == 8
    assert PTQRecipe.load(path, seed=5).seed == 5


@pytest.mark.parametrize("bad, says", [
    ({"quant": {"w_bitz": 4}}, "quant.w_bitz: unknown key"),
    ({"quant": {"seqlen": 4}}, "belongs to section 'eval'"),
    ({"w_bits": 4, "quant": {"w_bits": 8}}, "given twice"),
    ({"rotation": {"version": 2}}, "rotation.version: unknown key"),
])
def test_misplaced_keys_are_named_errors(tmp_path, bad, says):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=says):
        PTQRecipe.load(path)


def test_quantize_with_rotate_true_rotates_and_with_false_does_not():
    model = tiny_model("llama")
    state = rotaquant.quantize(model, w_bits=4, preset="none", rotate=True, progress=False)
    assert state.rotated_here and rotaquant.rotation_record(model) is not None
    model = tiny_model("llama")
    state = rotaquant.quantize(model, QuantConfig(w_bits=4, preset="none"), rotate=False, progress=False)
    assert not state.rotated_here and rotaquant.rotation_record(model) is None


def test_quantize_refuses_a_config_of_another_verb():
    with pytest.raises(ConfigError, match="sections"):
        rotaquant.quantize(tiny_model("llama"), rotaquant.learn.OptimizeConfig(a_bits=4), progress=False)


def test_rotate_with_a_rotation_config_is_rotate_with_its_arguments():
    a, b = tiny_model("llama"), tiny_model("llama")
    rotaquant.rotate(a, RotationConfig(rotation_mode="orthogonal", seed=7, online_rotations=False), progress=False)
    rotaquant.rotate(b, "auto", mode="orthogonal", seed=7, online=False, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ConfigError, match="rotate: false"):
        rotaquant.rotate(tiny_model("llama"), RotationConfig(rotate=False), progress=False)


def test_evaluate_takes_its_config(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("abc def ghi\n" * 80)
    model, tok = tiny_model("llama"), ByteTokenizer()
    cfg = EvaluateConfig(data=str(data), seqlen=32, max_windows=2)
    by_config = rotaquant.evaluate(model, tok, cfg, progress=False)["perplexity"]
    by_keys = rotaquant.evaluate(model, tok, data=str(data), seqlen=32, max_windows=2, progress=False)["perplexity"]
    assert by_config["windows"] == 2 and by_config["ppl"] == by_keys["ppl"]


def test_load_model_takes_a_model_config(tmp_path):
    from rotaquant.models.loading import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="nowhere"):
        rotaquant.load_model(ModelConfig(model=str(tmp_path / "nowhere"), device="cpu"))

"""The CLI is built from the configs: every config key is a flag of the same name, a YAML recipe and
the same flags give the same config, and the old spellings still work (hidden)."""

from __future__ import annotations

import argparse

import pytest
import yaml

from rotaquant.cli import build_parser
from rotaquant.cli_flags import config_overrides, flag_of
from rotaquant.config import EvalConfig, ModelConfig, RotateConfig
from rotaquant.eval.analyze import AnalyzeConfig
from rotaquant.learn.config import OptimizeConfig
from rotaquant.quant.pipeline import load_recipe
from rotaquant.quant.recipe import PTQRecipe
from rotaquant.rotation.hadamard import ROTATION_MODES

COMMANDS = {"eval": EvalConfig, "rotate": RotateConfig, "ptq": PTQRecipe, "optimize": OptimizeConfig,
            "analyze": AnalyzeConfig, "generate": ModelConfig}


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_config_key_is_a_flag_of_the_same_name(command):
    parser = _subparser(command)
    by_flag = {opt: a.dest for a in parser._actions for opt in a.option_strings}
    for key in COMMANDS[command].model_fields:
        if key == "version":
            continue
        assert by_flag.get(flag_of(key)) == key, f"{command}: {key} has no flag {flag_of(key)}"


def test_rotation_config_and_modes_are_spelt_once_everywhere():
    for command in ("rotate", "ptq", "optimize"):
        flags = {opt: a for a in _subparser(command)._actions for opt in a.option_strings}
        assert "--rotation-config" in flags
    for command, flag in (("rotate", "--rotation-mode"), ("ptq", "--rotation-mode"), ("optimize", "--init-mode")):
        action = next(a for a in _subparser(command)._actions if flag in a.option_strings)
        assert tuple(action.choices) == ROTATION_MODES


def test_yaml_recipe_and_flags_give_the_same_config(tmp_path):
    keys = {"w_bits": 4, "a_bits": 8, "w_groupsize": 32, "w_asym": True, "rotate": False, "rotation_config": "llama",
            "nsamples": 16, "cal_data": "wikitext2", "seqlen": 256, "w_method": "gptq", "skip_modules": ["*lm_head", "*q"],
            "a_type": "int", "preset": "none", "device": "cpu"}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(keys))
    argv = ["ptq"]
    for key, value in keys.items():
        if value is True:
            argv.append(flag_of(key))
        elif value is False:
            argv.append("--no-" + flag_of(key)[2:])
        else:
            argv += [flag_of(key), ",".join(value) if isinstance(value, list) else str(value)]
    args = build_parser().parse_args(argv)
    assert config_overrides(args, PTQRecipe) == keys
    assert load_recipe(None, **config_overrides(args, PTQRecipe)) == load_recipe(str(path))


def test_a_flag_overrides_only_its_key_of_a_nested_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"quant": {"w_bits": 4, "preset": "none"}, "calibration": {"cal_seqlen": 128}}))
    args = build_parser().parse_args(["ptq", "--recipe", str(path), "--seqlen", "512"])
    rec = load_recipe(args.recipe, **config_overrides(args, PTQRecipe))
    assert (rec.w_bits, rec.seqlen, rec.cal_seqlen) == (4, 512, 128)


def test_old_spellings_still_work_hidden():
    args = build_parser().parse_args(["rotate", "--config", "llama", "--mode", "orthogonal", "--output", "o"])
    assert config_overrides(args, RotateConfig) == {"rotation_config": "llama", "rotation_mode": "orthogonal", "output": "o"}
    args = build_parser().parse_args(["ptq", "--gptq", "--percdamp", "0.05", "--act-order", "--static-groups"])
    assert config_overrides(args, PTQRecipe) == {"w_method": "gptq", "gptq_damp": 0.05, "gptq_act_order": True,
                                                 "gptq_static_groups": True}
    assert build_parser().parse_args(["ptq", "--w-rtn"]).w_method == "rtn"
    assert build_parser().parse_args(["eval", "--limit", "3"]).task_limit == 3
    help_text = _subparser("rotate").format_help()
    assert "--rotation-config" in help_text and "--config" not in help_text.replace("--rotation-config", "")


def test_old_rotate_config_keys_load():
    cfg = RotateConfig(config="llama", mode="hadamard", output="o")
    assert (cfg.rotation_config, cfg.rotation_mode) == ("llama", "hadamard")
    with pytest.raises(ValueError, match="same setting"):
        RotateConfig(config="llama", rotation_config="qwen2", output="o")

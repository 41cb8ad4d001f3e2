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


@pytest.mark.parametrize("command", ["ptq", "optimize", "analyze"])
def test_recipe_means_the_jobs_yaml_and_config_is_never_shown(command):
    """``--recipe`` is the job's YAML in every command that reads one; ``--rotation-config`` the
    rotation spec; no command shows a bare ``--config``."""
    args = build_parser().parse_args([command, "--recipe", "r.yaml", "--output", "o"])
    assert args.recipe == "r.yaml"
    help_text = _subparser(command).format_help()
    assert "--recipe RECIPE" in help_text
    assert "--config" not in help_text.replace("--rotation-config", "")


def test_analyze_extra_quantize_keys_are_its_quant_key(tmp_path):
    """analyze's extra quantize() keys were `recipe` (flag --recipe YAML); now `quant` like a recipe's
    section, so --recipe is free for the job's YAML; the old key still loads."""
    keys = tmp_path / "q.yaml"
    keys.write_text("w_groupsize: 32\n")
    args = build_parser().parse_args(["analyze", "--quant", str(keys), "--output", "o"])
    assert config_overrides(args, AnalyzeConfig) == {"quant": {"w_groupsize": 32}}
    assert AnalyzeConfig.load(None, recipe={"w_groupsize": 32}).quant == {"w_groupsize": 32}
    assert AnalyzeConfig.load({"quant": {"w_groupsize": 32}}).quant_overrides()["w_groupsize"] == 32
    with pytest.raises(ValueError, match="same setting"):
        AnalyzeConfig(recipe={"w_groupsize": 32}, quant={"w_groupsize": 64})


@pytest.mark.parametrize("command", ["optimize", "analyze"])
def test_config_is_a_deprecated_alias_of_recipe(command, caplog):
    from rotaquant.cli import recipe_path
    from rotaquant.errors import ConfigError

    args = build_parser().parse_args([command, "--config", "old.yaml", "--output", "o"])
    with caplog.at_level("WARNING", logger="rotaquant"):
        assert recipe_path(args) == "old.yaml"
    assert "--config is deprecated, use --recipe" in caplog.text
    assert recipe_path(build_parser().parse_args([command, "--recipe", "r.yaml", "--output", "o"])) == "r.yaml"
    both = build_parser().parse_args([command, "--recipe", "r.yaml", "--config", "old.yaml", "--output", "o"])
    with pytest.raises(ConfigError, match="give the recipe once"):
        recipe_path(both)


def test_optimize_reads_its_recipe_with_either_spelling(tmp_path, monkeypatch):
    import rotaquant.jobs.learn as job
    from rotaquant.cli import main

    seen = []

    def fake_optimize(config, **kwargs):
        seen.append(job.load_config(config, **{k: v for k, v in kwargs.items() if k in OptimizeConfig.model_fields}))
        raise KeyboardInterrupt  # stop before any work; main maps it to exit 130

    monkeypatch.setattr(job, "optimize", fake_optimize)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"w_bits": 16, "a_bits": 4, "iterations": 7}))
    for flag in ("--recipe", "--config"):
        assert main(["optimize", "-q", flag, str(path), "--output", str(tmp_path / "R.safetensors")]) == 130
    assert [(c.a_bits, c.iterations) for c in seen] == [(4, 7), (4, 7)]

"""A flag overrides only its own key: --seqlen never overrides a recipe's cal_seqlen, and a recipe's
seqlen is the calibration length when cal_seqlen is not set."""

from __future__ import annotations

import pytest

from rotaquant.cli import build_parser
from rotaquant.cli_flags import config_overrides
from rotaquant.quant.pipeline import load_recipe
from rotaquant.quant.recipe import PTQRecipe


def _recipe(tmp_path, text, *flags):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    args = build_parser().parse_args(["ptq", "--recipe", str(path), *flags])
    return load_recipe(args.recipe, **config_overrides(args, PTQRecipe))


def test_seqlen_flag_keeps_the_recipes_cal_seqlen(tmp_path):
    rec = _recipe(tmp_path, "cal_seqlen: 512\n", "--seqlen", "1024")
    assert (rec.seqlen, rec.cal_seqlen) == (1024, 512)


def test_recipe_seqlen_flows_to_cal_seqlen_when_unset(tmp_path):
    rec = _recipe(tmp_path, "seqlen: 256\n")
    assert (rec.seqlen, rec.cal_seqlen) == (256, 256)
    rec = _recipe(tmp_path, "seqlen: 256\ncal_seqlen: 64\n")
    assert (rec.seqlen, rec.cal_seqlen) == (256, 64)


@pytest.mark.parametrize("flags,expected", [(["--seqlen", "128"], (128, 128)),
                                            (["--seqlen", "128", "--cal-seqlen", "32"], (128, 32)),
                                            (["--cal-seqlen", "32"], (2048, 32))])
def test_flags_alone(flags, expected):
    args = build_parser().parse_args(["ptq", *flags])
    rec = load_recipe(None, **config_overrides(args, PTQRecipe))
    assert (rec.seqlen, rec.cal_seqlen) == expected


def test_fp8_type_flags(tmp_path):
    rec = _recipe(tmp_path, "w_bits: 8\na_bits: 8\n", "--w-type", "float", "--a-type", "float", "--preset", "none")
    assert rec.weight_spec.type == rec.act_spec.type == "float" and rec.key_spec.type == "int"
    assert rec.bits_label() == "W8A8-FP8"
    with pytest.raises(Exception, match="FP8"):
        _recipe(tmp_path, "w_bits: 4\n", "--w-type", "float")

"""``rotaquant analyze`` flags, each mapped onto one :class:`~rotaquant.eval.analyze.AnalyzeConfig` key."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..errors import ConfigError
from .analyze import METHODS, AnalyzeConfig


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    return [int(v) for v in _csv(value)]


def add_analyze_args(p: argparse.ArgumentParser) -> None:
    """Add the analysis flags; every one defaults to None (= the config's value)."""
    p.add_argument("--config", default=None, help="YAML analysis config; flags given here override it")
    p.add_argument("--methods", type=_csv, default=None,
                   help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    p.add_argument("--rotation-path", default=None, help="R1/R2 file for spinquant (default: random Hadamard)")
    p.add_argument("--seed", type=int, default=None, help="seed of the rotations and the windows (default: 0)")
    p.add_argument("--smoothquant-alpha", type=float, default=None, help="SmoothQuant migration strength (default: 0.5)")
    q = p.add_argument_group("quantization (bits 2..8, or 16 = off; default W4A4KV4 RTN)")
    for what in ("w", "a", "k", "v"):
        q.add_argument(f"--{what}-bits", type=int, default=None)
    q.add_argument("--w-method", choices=["rtn", "gptq"], default=None, help="weight quantizer (default: rtn)")
    q.add_argument("--recipe", default=None,
                   help="YAML of more quantize() keys (groupsize, clip ratios, ...), applied to every method")
    c = p.add_argument_group("calibration windows (SmoothQuant, GPTQ and the comparison)")
    c.add_argument("--nsamples", type=int, default=None, help="windows (default: 4)")
    c.add_argument("--seqlen", type=int, default=None, help="tokens per window (default: 512)")
    c.add_argument("--cal-data", default=None, help="named set or .txt/.jsonl (default: wikitext2)")
    c.add_argument("--cal-split", default=None, help="split (default: validation)")
    c.add_argument("--data-dir", default=None, help="folder of the named sets")
    r = p.add_argument_group("report")
    r.add_argument("--threshold", type=float, default=None, help="flag cosines below this (default: 0.95)")
    r.add_argument("--modes", type=_csv, default=None, help="isolated,accumulated (default: both)")
    r.add_argument("--plot-layers", type=_ints, default=None,
                   help="layers of the channel-magnitude plots (default: the middle one and the worst)")
    r.add_argument("--no-plots", dest="plots", action="store_false", default=None, help="skip the PNGs")
    r.add_argument("--output", required=True, help="output folder (CSV, summary, table, PNGs)")
    r.add_argument("--overwrite", action="store_true", help="replace a previous rotaquant output folder")


KEYS = [k for k in AnalyzeConfig.model_fields if k not in ("version", "recipe")]


def analyze_overrides(args: argparse.Namespace) -> dict:
    """The config keys set on the command line (unset flags are left out)."""
    out = {k: getattr(args, k) for k in KEYS if getattr(args, k, None) is not None}
    if getattr(args, "recipe", None):
        path = Path(args.recipe)
        if not path.is_file():
            raise ConfigError(f"--recipe {path} does not exist")
        recipe = yaml.safe_load(path.read_text()) or {}
        if not isinstance(recipe, dict):
            raise ConfigError(f"--recipe {path} must hold a mapping of quantize() keys")
        out["recipe"] = recipe
    return out

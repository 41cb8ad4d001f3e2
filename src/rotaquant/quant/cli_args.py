"""``rotaquant ptq`` flags: SpinQuant's names, each mapped onto one PTQRecipe key."""

from __future__ import annotations

import argparse

from .recipe import PTQRecipe


def _bool_pair(parser, name: str, key: str, help_on: str, help_off: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(f"--{name}", dest=key, action="store_true", default=None, help=help_on)
    group.add_argument(f"--no-{name}", dest=key, action="store_false", default=None, help=help_off)


def add_quantizer_args(q) -> None:
    """The ``QuantSettings`` flags (bits, groups, asym, clip ratios of W/A/K/V) on a group."""
    for what, key in (("w", "weights"), ("a", "activations (per token)"), ("k", "keys"), ("v", "values")):
        q.add_argument(f"--{what}-bits", type=int, default=None, help=f"bits of the {key} (default: 16)")
        q.add_argument(f"--{what}-groupsize", type=int, default=None, help=f"group size of the {key} (default: one group per row)")
        q.add_argument(f"--{what}-asym", action="store_true", default=None, help=f"asymmetric {key} quantization")
    for what in ("a", "k", "v"):
        q.add_argument(f"--{what}-clip-ratio", type=float, default=None, help="clip ratio in (0, 1] (default: 1.0)")
    for what, key in (("w", "weights"), ("a", "activations")):
        q.add_argument(f"--{what}-type", default=None, choices=["int", "float"],
                       help=f"number type of the {key}: int (default) or float = FP8 e4m3 (with --{what}-bits 8)")
    grids = ["restricted", "full"]
    q.add_argument("--sym-grid", default=None, choices=grids,
                   help="scale of every symmetric grid: restricted = amax/(2^(b-1)-1), QuaRot's (default); "
                        "full = amax/((2^b-1)/2), compressed-tensors' (int4: amax/7.5, codes -8..7)")
    for what in ("w", "a", "k", "v"):
        q.add_argument(f"--{what}-sym-grid", default=None, choices=grids, help=f"--sym-grid for the {what.upper()} quantizer only")
    q.add_argument("--o-proj-input", default=None, choices=["per_token", "per_head", "mixed"],
                   help="o_proj input activations: one scale per token, one per token and head (spinquant), "
                        "or heads mixed by an online Hadamard first (quarot; not in rotation learning)")


def add_ptq_args(parser: argparse.ArgumentParser) -> None:
    """Add the quantization flags; every one defaults to None (= the recipe's value)."""
    parser.add_argument("--recipe", default=None, help="YAML recipe; flags given here override it")
    parser.add_argument(
        "--preset", default=None, choices=["auto", "none", "quarot", "spinquant"],
        help="a paper's W4A4KV4 recipe; explicit flags override it. quarot: GPTQ + weight clip search, "
             "symmetric activations clipped at 0.9, heads mixed by an online Hadamard before o_proj, "
             "asymmetric KV per head clipped at 0.95, random R1 + exact R2. spinquant: GPTQ + clip search, "
             "asymmetric activations, o_proj input quantized per head, asymmetric KV per head. "
             "auto (default): spinquant with GPTQv2 weights when anything is below 16 bits (the best "
             "measured); none: RTN, symmetric, no clipping")
    q = parser.add_argument_group("quantization (bits 2..8, or 16 = off)")
    add_quantizer_args(q)
    q.add_argument("--w-clip", action="store_true", default=None, help="search the weight clipping range (per channel)")
    method = q.add_mutually_exclusive_group()
    method.add_argument("--w-rtn", dest="w_method", action="store_const", const="rtn", default=None,
                        help="round-to-nearest weights (the default of --preset none)")
    method.add_argument("--gptq", dest="w_method", action="store_const", const="gptq",
                        help="GPTQ weights, in the architecture's sequential groups (the presets' default)")
    q.add_argument("--percdamp", dest="gptq_damp", type=float, default=None, help="GPTQ damping (default: 0.01)")
    q.add_argument("--act-order", dest="gptq_act_order", action="store_true", default=None, help="GPTQ act-order")
    q.add_argument("--gptq-v2", dest="gptq_v2", action="store_true", default=None,
                   help="GPTQv2 (GPTAQ, asymmetric calibration): fit the quantized layer on the quantized "
                        "model's inputs to the FP layer's output on FP inputs")
    q.add_argument("--smoothquant-alpha", type=float, default=None, metavar="A",
                   help="SmoothQuant with migration strength A in [0, 1] before quantizing (with --no-rotate)")
    q.add_argument("--static-groups", dest="gptq_static_groups", action="store_true", default=None,
                   help="GPTQ groups computed up front")
    r = parser.add_argument_group("rotation")
    _bool_pair(r, "rotate", "rotate", "rotate before quantizing (default)", "quantize without rotation")
    r.add_argument("--rotation-mode", default=None, choices=["hadamard", "base_hadamard", "orthogonal"],
                   help="mode of every fused matrix (default: each matrix's own mode in the rotation config, "
                        "random Hadamard for the built-in ones; the quarot preset uses an exact R2)")
    r.add_argument("--rotation-path", default=None, help="load R1/R2 from a file (rotaquant or SpinQuant format)")
    r.add_argument("--allow-partial-rotation", action="store_true", default=None,
                   help="accept a --rotation-path file that lacks some matrices (generated) or has extra ones (skipped)")
    r.add_argument("--rotation-config", default=None, help="auto, a built-in config name or a YAML path")
    z = parser.add_argument_group("zero-shot tasks (after the perplexity)")
    z.add_argument("--tasks", default=None, metavar="LIST",
                   help="comma-separated lm-eval tasks or 'all' (piqa, arc_easy, arc_challenge, hellaswag, "
                        "winogrande, boolq, lambada_openai, openbookqa)")
    z.add_argument("--task-limit", type=int, default=None, metavar="N", help="first N items of each task")
    o = parser.add_argument_group("export")
    o.add_argument("--output", default=None, metavar="DIR",
                   help="write the quantized model there as a compressed-tensors checkpoint (reload it with "
                        "rotaquant generate/eval --model DIR)")
    o.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing --output folder (only one rotaquant wrote)")
    c = parser.add_argument_group("calibration")
    c.add_argument("--nsamples", type=int, default=None, help="calibration windows for GPTQ (default: 128)")
    c.add_argument("--cal-seqlen", type=int, default=None,
                   help="calibration window length (default: the recipe's cal_seqlen, else --seqlen / seqlen)")
    c.add_argument("--cal-data", default=None, help="calibration text (default: wikitext2 validation)")
    c.add_argument("--seed", type=int, default=None, help="seed of rotations and calibration sampling (default: 0)")
    c.add_argument("--allow-test-calibration", action="store_true", default=None,
                   help="allow GPTQ calibration on the WikiText-2 test set (its perplexity is then not a fair measure)")


RECIPE_KEYS = [k for k in PTQRecipe.model_fields if k != "version"]


def recipe_overrides(args: argparse.Namespace) -> dict:
    """The recipe keys set on the command line (unset flags are left out)."""
    return {k: getattr(args, k) for k in RECIPE_KEYS if getattr(args, k, None) is not None}

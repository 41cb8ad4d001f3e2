"""Command-line flags built from the configs: a config key ``w_bits`` is the flag ``--w-bits``.

:func:`add_config_flags` adds one flag per field of a config class (its type, choices and
default come from the field; a bool is a ``--x`` / ``--no-x`` pair; a list is comma-separated);
:func:`config_overrides` reads back the keys given on the command line. Every flag defaults to
None, so a flag overrides only its own key of a YAML recipe. The help texts live here, once per
key; a key without one (a new config field) still gets its flag.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import StrictModel
from .errors import ConfigError
from .rotation.hadamard import ROTATION_MODES

# keys whose values are rotation modes: the choices are ROTATION_MODES (written once, there)
CHOICES: dict[str, tuple[str, ...]] = {"rotation_mode": ROTATION_MODES, "init_mode": ROTATION_MODES,
                                      "w_method": ("rtn", "gptq")}

_W, _A, _K, _V = "weights", "activations (per token)", "keys", "values"
HELP: dict[str, str] = {
    # model
    "model": "alias (smollm2-135m), .gguf file or HF model folder",
    "device": "cpu, cuda, cuda:N or auto",
    "dtype": "float32 | bf16 | fp16 | float64",
    # rotation
    "rotate": "rotate before quantizing (--no-rotate: quantize without rotation)",
    "rotation_config": "the architecture's rotation config: auto (the registry's config for the model class), "
                       "a built-in name (llama, qwen2, qwen3, mistral, mamba2, bamba, transformer_universal) or a YAML path",
    "rotation_mode": "mode of every fused matrix (default: each matrix's own mode in the rotation config, random "
                     "Hadamard for the built-in ones; the quarot preset uses an exact R2)",
    "rotation_path": "load R1/R2 from a file (rotaquant safetensors or SpinQuant torch format)",
    "allow_partial_rotation": "accept a rotation file that lacks some matrices (they are generated) or has extra "
                              "layers (skipped); a warning names them",
    "online_rotations": "insert the online rotations R3/R4 (--no-online-rotations: fused R1/R2 only)",
    "seed": "seed of the random matrices and of the calibration sampling",
    "verify": "compare the logits of a few tokens before and after rotating (--no-verify skips it)",
    # quantizers
    **{f"{w}_bits": f"bits of the {what}: 2..8, or 16 = off" for w, what in zip("wakv", (_W, _A, _K, _V), strict=True)},
    **{f"{w}_groupsize": f"group size of the {what} (default: one group per row)"
       for w, what in zip("wakv", (_W, _A, _K, _V), strict=True)},
    **{f"{w}_asym": f"asymmetric quantization of the {what}" for w, what in zip("wakv", (_W, _A, _K, _V), strict=True)},
    **{f"{w}_clip_ratio": "clip ratio in (0, 1]" for w in "akv"},
    **{f"{w}_sym_grid": f"--sym-grid for the {w.upper()} quantizer only" for w in "wakv"},
    **{f"{w}_type": f"number type of the {what}: int or float = FP8 e4m3 (with --{w}-bits 8)"
       for w, what in (("w", _W), ("a", _A))},
    "sym_grid": "scale of every symmetric grid: restricted = amax/(2^(b-1)-1), QuaRot's; full = amax/((2^b-1)/2), "
                "compressed-tensors' (int4: amax/7.5, codes -8..7)",
    "skip_modules": "comma-separated glob patterns of linears left unquantized",
    "o_proj_input": "o_proj input activations: one scale per token, one per token and head (spinquant), or heads "
                    "mixed by an online Hadamard first (quarot; not in rotation learning)",
    "preset": "a paper's W4A4KV4 recipe; explicit flags override it. quarot: GPTQ + weight clip search, symmetric "
              "activations clipped at 0.9, heads mixed by an online Hadamard before o_proj, asymmetric KV per head "
              "clipped at 0.95, random R1 + exact R2. spinquant: GPTQ + clip search, asymmetric activations, o_proj "
              "input quantized per head, asymmetric KV per head. auto: spinquant with GPTQv2 weights, activations "
              "clipped at 0.9 and KV at 0.95, when anything is below 16 bits (the best measured); none: RTN, symmetric, no clipping",
    "w_clip": "search the weight clipping range (per channel)",
    "w_method": "weight quantizer: rtn, or gptq in the architecture's sequential groups (the presets' default)",
    "gptq_damp": "GPTQ damping (SpinQuant's --percdamp)",
    "gptq_block_size": "GPTQ block size",
    "gptq_act_order": "GPTQ act-order",
    "gptq_static_groups": "GPTQ groups computed up front",
    "gptq_v2": "GPTQv2 (GPTAQ, asymmetric calibration): fit the quantized layer on the quantized model's inputs to "
               "the FP layer's output on FP inputs",
    "smoothquant_alpha": "SmoothQuant with migration strength in [0, 1] before quantizing (with --no-rotate)",
    # calibration
    "nsamples": "calibration windows",
    "cal_seqlen": "calibration window length (default: seqlen)",
    "cal_data": "calibration text: a named set (wikitext2) or a local .txt/.jsonl path",
    "cal_split": "split of the calibration set",
    "allow_test_calibration": "allow calibration on the WikiText-2 test set (its perplexity is then not a fair measure)",
    # evaluation
    "data": "named set (wikitext2) or a local .txt/.jsonl path",
    "split": "split of a named set: test or validation",
    "data_dir": "folder holding the named sets (default: $ROTAQUANT_DATA_DIR or ../shared/data)",
    "seqlen": "window length in tokens",
    "max_windows": "evaluate only the first N windows",
    "batch_size": "windows per forward pass",
    "tasks": "zero-shot tasks, lm-eval definitions, 0-shot: comma-separated or 'all' (piqa, arc_easy, arc_challenge, "
             "hellaswag, winogrande, boolq, lambada_openai, openbookqa)",
    "task_limit": "only the first N items of each task",
    "task_batch_size": "sequences per forward pass for the tasks",
    "bos": "BOS policy of the tasks: the tokenizer's own special tokens (lm-eval >= 0.4.10), never (lm-eval <= "
           "0.4.9.1), or always prepend BOS",
    "ppl": "with --tasks: also the perplexity (--no-ppl skips it)",
    # output
    "output": "output folder (must not exist, be empty, or be a previous rotaquant output with --overwrite)",
    "overwrite": "replace an existing output (only one rotaquant wrote)",
    # rotation learning
    "init_mode": "initial R1/R2",
    "init_path": "start from the matrices of a rotation file",
    "iterations": "optimizer steps (default: 200 for the Cayley SGD of the auto preset, else 100)",
    "micro_batch_size": "windows per forward (gradient accumulation)",
    "optimizer": "Cayley SGD or Cayley Adam",
    "lr": "learning rate (default: 6.0 for the Cayley SGD of the auto preset, else 1.5)",
    "momentum": "Cayley SGD momentum",
    "lr_schedule": "learning-rate schedule",
    "cayley_step_norm": "norm of the Cayley direction W in the step cap min(lr, 1/||W||): frobenius or one, the "
                        "largest column sum (SpinQuant's Cayley SGD)",
    "ste": "gradient of the fake quantizers: straight through (identity) or also through the scales",
    "autocast": "autocast dtype of the layers (auto: bf16 on GPU, none on CPU)",
    "gradient_checkpointing": "recompute activations in the backward (--no-gradient-checkpointing: faster, more memory)",
    "checkpoint_every": "steps between checkpoints",
    "fsdp": "under torchrun: shard the frozen model with FSDP2 (one decoder layer gathered at a time; rotations "
            "replicated, their gradients all-reduced)",
    # analysis
    "methods": "comma-separated processing methods: none, quarot, spinquant, smoothquant",
    "quant": "YAML of more quantize() keys (groupsize, clip ratios, ...), applied to every method",
    "modes": "comma-separated: isolated, accumulated",
    "threshold": "flag cosines below this",
    "outlier_k": "a channel is an outlier above k times the median magnitude",
    "plots": "write the PNGs (--no-plots skips them)",
    "plot_layers": "comma-separated layers of the channel-magnitude plots (default: the middle one and the worst)",
}


def _kind(annotation) -> tuple[str, Any]:
    """(kind, detail) of a field type: bool, choice, list, int, float, str or yaml (a mapping)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(annotation) if a is not type(None)] if union else [annotation]
    for arg in args:
        if typing.get_origin(arg) is Literal:
            return "choice", typing.get_args(arg)
    if bool in args:
        return "bool", None
    for arg in args:
        if typing.get_origin(arg) is list:
            return "list", typing.get_args(arg)[0]
    for scalar in (int, float, str):
        if scalar in args:
            return scalar.__name__, scalar
    return "yaml", None


def _csv(element: type):
    def parse(text: str) -> list:
        return [element(v.strip()) for v in text.split(",") if v.strip()]
    return parse


def _yaml_file(text: str) -> dict:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise argparse.ArgumentTypeError(f"{path} must hold a mapping of keys")
    return loaded


def flag_of(key: str) -> str:
    """The flag of a config key: ``w_bits`` -> ``--w-bits``."""
    return "--" + key.replace("_", "-")


def add_config_flags(parser, config: type[StrictModel], *, keys: list[str] | None = None, skip: tuple = (),
                     required: tuple = (), helps: dict[str, str] | None = None) -> list[str]:
    """Add one flag per field of ``config`` (or of ``keys``, in that order) to ``parser`` (a parser or
    an argument group); returns the keys added. Flags default to None (= the config's value)."""
    added = []
    for key in keys if keys is not None else list(config.model_fields):
        if key == "version" or key in skip:
            continue
        field = config.model_fields[key]
        kind, detail = _kind(field.annotation)
        text = (helps or {}).get(key) or HELP.get(key) or field.description or key.replace("_", " ")
        default = field.get_default(call_default_factory=True)
        if default is not None and kind != "bool" and "default:" not in text:
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            text += f" (default: {shown})"
        flag = flag_of(key)
        if kind == "bool":
            group = parser.add_mutually_exclusive_group()
            group.add_argument(flag, dest=key, action="store_true", default=None,
                               help=text + (" (default)" if default else ""))
            group.add_argument(f"--no-{flag[2:]}", dest=key, action="store_false", default=None,
                               help=argparse.SUPPRESS if not default else f"the opposite of {flag}")
        elif kind == "choice" or key in CHOICES:
            parser.add_argument(flag, dest=key, default=None, choices=CHOICES.get(key, detail), help=text,
                                required=key in required)
        elif kind == "list":
            parser.add_argument(flag, dest=key, default=None, type=_csv(detail), metavar="A,B,...", help=text)
        elif kind == "yaml":
            parser.add_argument(flag, dest=key, default=None, type=_yaml_file, metavar="YAML", help=text)
        else:
            parser.add_argument(flag, dest=key, default=None, type=detail, help=text, required=key in required)
        added.append(key)
    return added


def add_alias(parser, flag: str, key: str, **kwargs) -> None:
    """A hidden, deprecated spelling of a config flag (it sets the same key)."""
    parser.add_argument(flag, dest=key, default=None, help=argparse.SUPPRESS, **kwargs)


def config_overrides(args: argparse.Namespace, config: type[StrictModel]) -> dict[str, Any]:
    """The keys of ``config`` given on the command line (flags left unset are left out)."""
    return {k: getattr(args, k) for k in config.model_fields if getattr(args, k, None) is not None}


def load_yaml_keys(path: str | None, what: str) -> dict:
    """A YAML mapping given by path (``--recipe``), or a named error."""
    if path is None:
        return {}
    try:
        return _yaml_file(path)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{what}: {exc}") from None

"""``rotaquant optimize`` flags, each mapped onto one :class:`OptimizeConfig` key."""

from __future__ import annotations

import argparse

from ..quant.cli_args import add_quantizer_args
from .config import OptimizeConfig


def add_optimize_args(parser: argparse.ArgumentParser) -> None:
    """Add the learning flags; every config flag defaults to None (= the config's value)."""
    parser.add_argument("--config", default=None, help="YAML config; flags given here override it")
    parser.add_argument("--output", required=True, help="rotation file to write (rotaquant safetensors)")
    parser.add_argument("--spinquant-output", default=None,
                        help="also write SpinQuant's torch format (R1, model.layers.i.self_attn.R2)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default: OUTPUT.ckpt)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--json", default=None, metavar="PATH", help="write settings, losses and timings as JSON")
    add_quantizer_args(parser.add_argument_group("fake quantization during learning (bits 2..8, or 16 = off)"))
    t = parser.add_argument_group("optimization")
    t.add_argument("--iterations", type=int, default=None, help="optimizer steps (default: 100)")
    t.add_argument("--batch-size", type=int, default=None, help="windows per step, over all GPUs (default: 8)")
    t.add_argument("--micro-batch-size", type=int, default=None, help="windows per forward (gradient accumulation)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 1.5)")
    t.add_argument("--momentum", type=float, default=None, help="Cayley SGD momentum (default: 0)")
    t.add_argument("--optimizer", default=None, choices=["sgd", "adam"], help="Cayley SGD (default) or Cayley Adam")
    t.add_argument("--lr-schedule", default=None, choices=["cosine", "linear", "constant"], help="(default: cosine)")
    t.add_argument("--cayley-step-norm", default=None, choices=["frobenius", "one"],
                   help="norm of the Cayley direction W in the step cap min(lr, 1/||W||): frobenius (default) "
                        "or one, the largest column sum (SpinQuant's Cayley SGD)")
    t.add_argument("--ste", default=None, choices=["identity", "scale"],
                   help="gradient of the fake quantizers: straight through (default) or also through the scales")
    t.add_argument("--autocast", default=None, choices=["auto", "none", "bf16", "fp16"],
                   help="autocast dtype of the layers (default: bf16 on GPU, none on CPU)")
    t.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false", default=None,
                   help="keep all activations (faster, more memory)")
    t.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 25)")
    t.add_argument("--fsdp", action="store_true", default=None,
                   help="under torchrun: shard the frozen model with FSDP2 (one decoder layer gathered at a time; "
                        "rotations replicated, their gradients all-reduced)")
    r = parser.add_argument_group("rotations and data")
    r.add_argument("--rotation-config", default=None, help="auto, a built-in config name or a YAML path")
    r.add_argument("--init-mode", default=None, choices=["hadamard", "base_hadamard", "orthogonal"],
                   help="initial R1/R2 (default: hadamard, random signs)")
    r.add_argument("--init-path", default=None, help="start from the matrices of a rotation file")
    r.add_argument("--allow-partial-rotation", action="store_true", default=None,
                   help="accept an --init-path file that lacks some matrices (the init mode fills them in)")
    r.add_argument("--seed", type=int, default=None, help="seed of the initial matrices and the data (default: 0)")
    r.add_argument("--data", default=None, help="calibration text: wikitext2 (validation split) or a local path")
    r.add_argument("--split", default=None, help="split of a named set (default: validation; test is refused)")
    r.add_argument("--allow-test-calibration", action="store_true", default=None,
                   help="allow learning on the WikiText-2 test set (its perplexity is then not a fair measure)")
    r.add_argument("--data-dir", default=None, help="folder of the named sets (default: $ROTAQUANT_DATA_DIR)")
    r.add_argument("--nsamples", type=int, default=None, help="calibration windows (default: 800)")
    r.add_argument("--seqlen", type=int, default=None, help="window length (default: 2048)")


KEYS = [k for k in OptimizeConfig.model_fields if k != "version"]


def optimize_overrides(args: argparse.Namespace) -> dict:
    """The config keys set on the command line (unset flags are left out)."""
    return {k: getattr(args, k) for k in KEYS if getattr(args, k, None) is not None}

"""The ``rotaquant`` command line: each subcommand is a thin map onto one public function."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .cli_flags import add_alias, add_config_flags, config_overrides
from .errors import ConfigError, RotaquantError
from .io import atomic_write_json, check_writable_output
from .rotation.hadamard import ROTATION_MODES

logger = logging.getLogger("rotaquant")

EPILOG = """examples:
  rotaquant eval --model smollm2-135m --max-windows 2 --seqlen 512
  rotaquant eval --model ./my-hf-folder --dtype bf16 --device cuda --batch-size 8 --json out.json
  rotaquant eval --model smollm2-135m --tasks piqa,arc_easy --task-limit 200 --no-ppl --json zs.json
  rotaquant rotate --model smollm2-135m --rotation-mode hadamard --output ./smollm2-rotated
  rotaquant ptq --model smollm2-135m --w-bits 4 --a-bits 4 --k-bits 4 --v-bits 4 --gptq
  rotaquant ptq --model smollm2-135m --w-bits 4 --w-groupsize 128 --output ./smollm2-w4
  rotaquant generate --model ./smollm2-w4 --prompt "The capital of France is" --max-new-tokens 32
  rotaquant optimize --model smollm2-135m --w-bits 16 --a-bits 4 --k-bits 4 --v-bits 4 --output R.safetensors
  rotaquant ptq --model smollm2-135m --w-bits 4 --a-bits 4 --k-bits 4 --v-bits 4 --gptq --rotation-path R.safetensors
  rotaquant analyze --model smollm2-135m --methods none,quarot,spinquant,smoothquant --output ./analysis
  rotaquant demo
"""


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import EvalConfig

    over = config_overrides(args, EvalConfig)
    if args.json:  # before any work, for perplexity and zero-shot runs alike
        check_writable_output(args.json, "file", overwrite=True)
    if over.get("tasks"):
        return _eval_tasks(args, over)
    from .jobs.eval import run_eval

    result = run_eval(None, progress=not args.quiet, **over)
    print(f"{result.extra.get('model')}: {result.summary()}")
    if args.json:
        atomic_write_json(args.json, result.to_dict())
    return 0


def _eval_tasks(args: argparse.Namespace, over: dict) -> int:
    from .jobs.eval import run_eval_tasks

    result = run_eval_tasks(None, progress=not args.quiet, **over)
    ppl = result["perplexity"]
    if ppl:
        print(f"{result['model']}: ppl={ppl['ppl']:.4f} windows={ppl['windows']} seqlen={ppl['seqlen']} "
              f"data={ppl['data']}/{ppl['split']}")
    limit = result["config"]["task_limit"]
    limit = f", first {limit} items per task" if limit else ""
    print(f"{result['model']}: zero-shot accuracy (%, lm-eval definitions, 0-shot{limit})")
    print(result.pop("summary"))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from .config import RotateConfig
    from .jobs.rotate import run_rotate

    out = run_rotate(config_overrides(args, RotateConfig), progress=not args.quiet)
    print(f"wrote {out}: R1/R2 fused; it reloads with AutoModelForCausalLM.from_pretrained. "
          "Online R3/R4 are not part of this export: a plain folder cannot run them; `rotaquant ptq ... "
          "--output DIR` writes a quantized checkpoint that carries them.")
    return 0


def cmd_ptq(args: argparse.Namespace) -> int:
    from .jobs.ptq import run_ptq
    from .quant.recipe import PTQRecipe

    if args.json:
        check_writable_output(args.json, "file", overwrite=True)
    result = run_ptq(args.recipe, progress=not args.quiet, **config_overrides(args, PTQRecipe))
    ev = result["eval"]
    print(f"{result['label']}: ppl={result['ppl']:.4f} windows={ev['windows']} seqlen={ev['seqlen']} "
          f"device={ev['device']} seconds={result['seconds']['total']:.1f}")
    if result.get("zeroshot"):
        print(result["zeroshot"]["summary"])
    if result.get("export"):
        ex = result["export"]
        print(f"wrote {ex['output']}: compressed-tensors {ex['format']}, {ex['quantized_linears']} quantized linears, "
              f"transforms {ex['transforms'] or 'none'}; reload with rotaquant generate/eval --model {ex['output']}")
        for note in ex["notes"]:
            print(f"  not in the compressed-tensors config (exact in rotaquant_stages.json): {note}")
    if args.json:  # after printing: a write error cannot lose the result
        atomic_write_json(args.json, result)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .generate import generate
    from .models.loading import load_model

    model, tokenizer = load_model(ModelConfig.load(None, **config_overrides(args, ModelConfig)), kernel=args.kernel)
    res = generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, stream=True)
    print(f"\n[{res['new_tokens']} tokens in {res['seconds']:.2f} s, {res['tokens_per_second']:.1f} tokens/s]",
          file=sys.stderr)
    return 0


def add_recipe_flag(parser: argparse.ArgumentParser) -> None:
    """``--recipe``: the job's YAML (as in ``ptq``); ``--config``, its old spelling in ``optimize``
    and ``analyze``, stays as a hidden deprecated alias (``--rotation-config`` is the rotation spec)."""
    parser.add_argument("--recipe", default=None, help="YAML recipe of the keys below; flags given here override it")
    parser.add_argument("--config", dest="recipe_alias", default=None, help=argparse.SUPPRESS)


def recipe_path(args: argparse.Namespace) -> str | None:
    """The ``--recipe`` path, or the deprecated ``--config`` one (with a warning); both is an error."""
    if args.recipe_alias is None:
        return args.recipe
    if args.recipe is not None:
        raise ConfigError("give the recipe once: --recipe (--config is its deprecated spelling)")
    logger.warning("rotaquant %s: --config is deprecated, use --recipe (the job's YAML; --rotation-config "
                   "is the rotation spec)", args.command)
    return args.recipe_alias


def cmd_optimize(args: argparse.Namespace) -> int:
    from .jobs.learn import optimize
    from .learn.config import OptimizeConfig

    res = optimize(recipe_path(args), output=args.output, spinquant_output=args.spinquant_output,
                   checkpoint=args.checkpoint, resume=args.resume, json_path=args.json,
                   overwrite=bool(args.overwrite), progress=not args.quiet, **config_overrides(args, OptimizeConfig))
    if not res["main"]:
        return 0
    print(f"{res['bits']} rotations learned on {res['device']} x{res['world_size']}: loss "
          f"{res['first_loss']:.4f} -> {res['last_loss']:.4f} in {res['steps_run']} steps "
          f"({res['seconds_per_step']:.2f} s/step); wrote {args.output}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .eval.analyze import AnalyzeConfig
    from .jobs.analyze import run_analyze

    res = run_analyze(recipe_path(args), output=args.output, overwrite=args.overwrite, progress=not args.quiet,
                      **config_overrides(args, AnalyzeConfig))
    print(res["summary"] + "\nlayer-output cosine, side by side:\n" + res["layers_table"])
    print(f"wrote {res['output']}: {', '.join(res['files'])} ({res['seconds']['total']:.0f} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .jobs.demo import run_demo

    if args.json:
        check_writable_output(args.json, "file", overwrite=True)
    run_demo(max_windows=args.max_windows, device=args.device, json_path=args.json,
             progress=not args.quiet, weights=args.weights)
    return 0


class _Sub:
    """Adds subcommands that all share the ``common`` flags."""

    def __init__(self, action, common: argparse.ArgumentParser):
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self.action.add_parser(name, parents=[self.common], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rotaquant",
        description="Rotation-based post-training quantization of LLMs (offline, local files only).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # The same two flags are accepted after the subcommand too; SUPPRESS keeps the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    sub = _Sub(parser.add_subparsers(dest="command", metavar="COMMAND"), common)

    from .config import EvalConfig, ModelConfig, RotateConfig
    from .eval.analyze import AnalyzeConfig
    from .learn.config import OptimizeConfig
    from .quant.qlinear import KERNELS
    from .quant.recipe import SECTIONS, PTQRecipe, section_of

    p = sub.add_parser("eval", help="WikiText-2 perplexity and zero-shot accuracy (--tasks) of a model",
                       description="Perplexity over non-overlapping windows: rows joined with "
                       "'\\n\\n', tokenized once, PPL = exp(mean token NLL). With --tasks, also "
                       "zero-shot accuracy with lm-evaluation-harness's definitions (local task files "
                       "under DATA_DIR/zeroshot).")
    add_config_flags(p, EvalConfig)
    add_alias(p, "--limit", "task_limit", type=int)  # deprecated spelling of --task-limit
    p.add_argument("--json", default=None, metavar="PATH", help="write settings and results as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("rotate", help="rotate a model (norms folded, R1/R2 fused) and export an HF folder",
                       description="Fold norms and fuse R1 (residual) and R2 (per head V/O) rotations in "
                       "float64, then write a standard Hugging Face folder that plain transformers "
                       "reloads. Online R3/R4 are not part of this export.")
    add_config_flags(p, RotateConfig, required=("output",))
    # deprecated spellings of --rotation-config / --rotation-mode (rotate alone used them)
    add_alias(p, "--config", "rotation_config")
    add_alias(p, "--mode", "rotation_mode", choices=ROTATION_MODES)
    p.set_defaults(func=cmd_rotate)

    p = sub.add_parser("ptq", help="rotate, quantize (RTN/GPTQ, activations, KV cache) and evaluate",
                       description="Post-training quantization with SpinQuant's flags or a YAML recipe (flat "
                       "keys, or nested in the sections model, rotation, quant, calibration, eval, output; a "
                       "flag is its key with dashes and overrides only that key); prints the quantized model's "
                       "WikiText-2 perplexity. --json writes every setting and result (the perplexity under 'ppl').")
    p.add_argument("--recipe", default=None, help="YAML recipe; flags given here override its keys")
    p.add_argument("--json", default=None, metavar="PATH", help="write settings and results as JSON")
    for name in SECTIONS:
        group = p.add_argument_group(f"recipe section '{name}'")
        add_config_flags(group, PTQRecipe, keys=[k for k in PTQRecipe.model_fields if section_of(k) == name])
    # SpinQuant's spellings, kept as hidden aliases of the recipe keys
    add_alias(p, "--gptq", "w_method", action="store_const", const="gptq")
    add_alias(p, "--w-rtn", "w_method", action="store_const", const="rtn")
    add_alias(p, "--percdamp", "gptq_damp", type=float)
    add_alias(p, "--act-order", "gptq_act_order", action="store_const", const=True)
    add_alias(p, "--static-groups", "gptq_static_groups", action="store_const", const=True)
    p.set_defaults(func=cmd_ptq)

    p = sub.add_parser("generate", help="stream text from a model (a quantized export runs on integer kernels)",
                       description="Greedy (or sampled) continuation of --prompt with a KV cache. A folder "
                       "written by `rotaquant ptq --output` reloads with packed weights, its online "
                       "rotations and its activation/KV quantizers.")
    add_config_flags(p, ModelConfig)
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--kernel", default="auto", choices=KERNELS,
                   help="quantized exports: the matmul kernel (default: auto = the fastest that applies)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("optimize", help="learn R1/R2 (Cayley SGD through fake-quantized forwards) -> rotation file",
                       description="SpinQuant-style rotation learning: R1 and per-layer R2 are trained on "
                       "WikiText-2 validation windows with everything else frozen, through fake-quantized "
                       "weights/activations/KV (straight-through gradients). The output feeds "
                       "`rotaquant ptq --rotation-path` and `rotaquant rotate --rotation-path`. Under "
                       "`torchrun --nproc-per-node N` the batch is split across the GPUs.")
    add_recipe_flag(p)
    p.add_argument("--output", required=True, help="rotation file to write (rotaquant safetensors)")
    p.add_argument("--spinquant-output", default=None,
                   help="also write SpinQuant's torch format (R1, model.layers.i.self_attn.R2)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: OUTPUT.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--json", default=None, metavar="PATH", help="write settings, losses and timings as JSON")
    add_config_flags(p, OptimizeConfig, helps={
        "nsamples": "calibration windows", "split": "split of a named set (test is refused)",
        "loss": "ce: cross-entropy on the next token (SpinQuant's); kl_top: KL divergence to the full-precision "
                "model's top-k next-token distribution (predicted once before learning)",
        "distill_top_k": "kl_top: how many of the FP model's most likely tokens per position",
        "lr": "Cayley SGD learning rate (default: 6.0 with --preset auto and SGD, else 1.5)",
        "data": "calibration text: wikitext2 (validation split) or a local .txt/.jsonl path",
        "preset": "auto: learn with the activation and KV quantizers ptq's default recipe deploys (asymmetric, "
                  "per head before o_proj, activations clipped at 0.9, KV at 0.95) and W16A4KV4 when no bits are "
                  "given (GPTQ runs on the weights after learning); none: symmetric, no clipping. Explicit flags "
                  "override it"})
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("analyze", help="layer-wise error of QuaRot/SpinQuant/SmoothQuant-style processing -> CSV, PNGs",
                       description="For each method, process a copy of the model, quantize it and compare "
                       "every decoder layer and submodule with the full-precision model (cosine, MSE; "
                       "each layer fed the FP input and its own input); also the kurtosis and channel "
                       "magnitudes of the linear inputs. Writes analysis.csv, summary.txt, "
                       "side_by_side.md, analysis.json and PNGs into --output.")
    add_recipe_flag(p)
    p.add_argument("--output", required=True, help="output folder (CSV, summary, table, PNGs)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous rotaquant output folder")
    add_config_flags(p, AnalyzeConfig, helps={"w_method": "weight quantizer (default: rtn)",
                                              "rotation_path": "R1/R2 file for spinquant (default: random Hadamard)"})
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("demo", help="the main job: FP vs W4A4KV4 without and with rotation",
                       description="Runs the quick start job on smollm2-135m and WikiText-2: FP, "
                       "W4A4KV4 without rotation and W4A4KV4 with R1-R4 rotation, with the default "
                       "recipe (the spinquant preset with GPTQv2: GPTQ + clip search, asymmetric activations and KV, "
                       "o_proj per head, activations clipped at 0.9 and KV at 0.95), as a table (on GPU: GPTQ on 128 calibration windows, the whole test "
                       "split; on CPU: RTN + clip search instead of GPTQ and the first 8 test windows).")
    p.add_argument("--max-windows", type=int, default=None,
                   help="windows of 2048 tokens (default: 8 on CPU, all on GPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: auto)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the table as JSON")
    p.add_argument("--weights", default="auto", choices=["auto", "gptq", "rtn"],
                   help="auto (default): the recipe's GPTQ on GPU, RTN + clip search on CPU (GPTQ of 30 "
                        "layers takes far longer there); gptq or rtn to force one")
    p.set_defaults(func=cmd_demo)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that ``finally`` blocks clean up as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run one ``rotaquant`` command; returns the exit status (2: a named error, 130/143: interrupted)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the command line never reaches the hub
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "accelerate", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except RotaquantError as exc:
        print(f"rotaquant {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path rotaquant reads or writes: the message names it
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"rotaquant {args.command}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM); temporary files removed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``rotaquant`` command line: each subcommand is a thin map onto one public function."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .errors import RotaquantError
from .io import atomic_write_json, check_writable_output

logger = logging.getLogger("rotaquant")

EPILOG = """examples:
  rotaquant eval --model smollm2-135m --max-windows 2 --seqlen 512
  rotaquant eval --model ./my-hf-folder --dtype bf16 --device cuda --batch-size 8 --json out.json
  rotaquant eval --model smollm2-135m --tasks piqa,arc_easy --limit 200 --no-ppl --json zs.json
  rotaquant rotate --model smollm2-135m --mode hadamard --output ./smollm2-rotated
  rotaquant ptq --model smollm2-135m --w-bits 4 --a-bits 4 --k-bits 4 --v-bits 4 --gptq
  rotaquant ptq --model smollm2-135m --w-bits 4 --w-groupsize 128 --output ./smollm2-w4
  rotaquant generate --model ./smollm2-w4 --prompt "The capital of France is" --max-new-tokens 32
  rotaquant optimize --model smollm2-135m --w-bits 16 --a-bits 4 --k-bits 4 --v-bits 4 --output R.safetensors
  rotaquant ptq --model smollm2-135m --w-bits 4 --a-bits 4 --k-bits 4 --v-bits 4 --gptq --rotation-path R.safetensors
  rotaquant analyze --model smollm2-135m --methods none,quarot,spinquant,smoothquant --output ./analysis
  rotaquant demo
"""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that loads a model."""
    parser.add_argument("--model", default="smollm2-135m",
                        help="alias (smollm2-135m), .gguf file or HF model folder (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--dtype", default=None, help="float32 | bf16 | fp16 | float64 (default: float32)")


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    """Perplexity flags shared by ``eval``, ``ptq`` and ``demo``."""
    parser.add_argument("--data", default=None, help="named set (wikitext2) or a local .txt/.jsonl path")
    parser.add_argument("--split", default=None, help="split of a named set: test or validation (default: test)")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding the named sets (default: $ROTAQUANT_DATA_DIR or ../shared/data)")
    parser.add_argument("--seqlen", type=int, default=None, help="window length (default: 2048)")
    parser.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default: 1)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write settings and results as JSON")


def eval_overrides(args: argparse.Namespace) -> dict:
    """The evaluation settings given on the command line (unset flags are left out)."""
    keys = ("model", "device", "dtype", "data", "split", "data_dir", "seqlen", "max_windows", "batch_size")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def cmd_eval(args: argparse.Namespace) -> int:
    if args.json:  # before any work, for perplexity and zero-shot runs alike
        check_writable_output(args.json, "file", overwrite=True)
    if args.tasks:
        from .eval.cli_args import cmd_eval_tasks

        return cmd_eval_tasks(args, eval_overrides(args))
    from .jobs.eval import run_eval

    result = run_eval(None, progress=not args.quiet, **eval_overrides(args))
    print(f"{result.extra.get('model')}: {result.summary()}")
    if args.json:
        atomic_write_json(args.json, result.to_dict())
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from .jobs.rotate import run_rotate

    keys = ("model", "config", "mode", "seed", "rotation_path", "output", "device", "dtype", "overwrite",
            "allow_partial_rotation", "verify")
    out = run_rotate({k: getattr(args, k) for k in keys if getattr(args, k, None) is not None},
                     progress=not args.quiet)
    print(f"wrote {out}: R1/R2 fused; it reloads with AutoModelForCausalLM.from_pretrained. "
          "Online R3/R4 are not part of this export: a plain folder cannot run them; `rotaquant ptq ... "
          "--output DIR` writes a quantized checkpoint that carries them.")
    return 0


def cmd_ptq(args: argparse.Namespace) -> int:
    from .jobs.ptq import run_ptq
    from .quant.cli_args import recipe_overrides

    if args.json:
        check_writable_output(args.json, "file", overwrite=True)
    result = run_ptq(args.recipe, progress=not args.quiet, **recipe_overrides(args))
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
    from .generate import generate
    from .models.loading import load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype or "float32", device=args.device or "auto",
                                  kernel=args.kernel)
    res = generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, stream=True)
    print(f"\n[{res['new_tokens']} tokens in {res['seconds']:.2f} s, {res['tokens_per_second']:.1f} tokens/s]",
          file=sys.stderr)
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from .jobs.learn import optimize
    from .learn.cli_args import optimize_overrides

    res = optimize(args.config, output=args.output, spinquant_output=args.spinquant_output,
                   checkpoint=args.checkpoint, resume=args.resume, json_path=args.json,
                   overwrite=bool(args.overwrite), progress=not args.quiet, **optimize_overrides(args))
    if not res["main"]:
        return 0
    print(f"{res['bits']} rotations learned on {res['device']} x{res['world_size']}: loss "
          f"{res['first_loss']:.4f} -> {res['last_loss']:.4f} in {res['steps_run']} steps "
          f"({res['seconds_per_step']:.2f} s/step); wrote {args.output}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .eval.analyze_args import analyze_overrides
    from .jobs.analyze import run_analyze

    res = run_analyze(args.config, output=args.output, overwrite=args.overwrite, progress=not args.quiet,
                      **analyze_overrides(args))
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

    p = sub.add_parser("eval", help="WikiText-2 perplexity and zero-shot accuracy (--tasks) of a model",
                       description="Perplexity over non-overlapping windows: rows joined with "
                       "'\\n\\n', tokenized once, PPL = exp(mean token NLL). With --tasks, also "
                       "zero-shot accuracy with lm-evaluation-harness's definitions.")
    add_model_args(p)
    add_eval_args(p)
    from .eval.cli_args import add_zeroshot_args

    add_zeroshot_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("rotate", help="rotate a model (norms folded, R1/R2 fused) and export an HF folder",
                       description="Fold norms and fuse R1 (residual) and R2 (per head V/O) rotations in "
                       "float64, then write a standard Hugging Face folder that plain transformers "
                       "reloads. Online R3/R4 are not part of this export.")
    add_model_args(p)
    p.add_argument("--config", default=None,
                   help="auto (the registry's config for the model class), a built-in name "
                   "(llama, qwen2, qwen3, mistral, mamba2, bamba, transformer_universal) or a YAML path (default: auto)")
    p.add_argument("--mode", default=None, choices=["hadamard", "base_hadamard", "orthogonal"],
                   help="override every fused matrix's mode (default: the config's, random Hadamard)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random matrices (default: 0)")
    p.add_argument("--rotation-path", default=None,
                   help="load R1/R2 from a file (rotaquant safetensors or SpinQuant torch format)")
    p.add_argument("--output", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing output folder (only one rotaquant wrote)")
    p.add_argument("--allow-partial-rotation", action="store_true", default=None,
                   help="accept a --rotation-path file that lacks some matrices (they are generated) or has "
                   "extra layers (skipped); a warning names them")
    p.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                   help="skip comparing the logits of a few tokens before and after rotating (default: compare)")
    p.set_defaults(func=cmd_rotate)

    p = sub.add_parser("ptq", help="rotate, quantize (RTN/GPTQ, activations, KV cache) and evaluate",
                       description="Post-training quantization with SpinQuant's flags or a YAML recipe; "
                       "prints the quantized model's WikiText-2 perplexity. --json writes every setting "
                       "and result (the perplexity under 'ppl').")
    add_model_args(p)
    add_eval_args(p)
    from .quant.cli_args import add_ptq_args

    add_ptq_args(p)
    p.set_defaults(func=cmd_ptq)

    p = sub.add_parser("generate", help="stream text from a model (a quantized export runs on integer kernels)",
                       description="Greedy (or sampled) continuation of --prompt with a KV cache. A folder "
                       "written by `rotaquant ptq --output` reloads with packed weights, its online "
                       "rotations and its activation/KV quantizers.")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--kernel", default="auto", choices=["auto", "reference", "int4mm", "int8mm"],
                   help="quantized exports: the matmul kernel (default: auto = the fastest that applies)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("optimize", help="learn R1/R2 (Cayley SGD through fake-quantized forwards) -> rotation file",
                       description="SpinQuant-style rotation learning: R1 and per-layer R2 are trained on "
                       "WikiText-2 validation windows with everything else frozen, through fake-quantized "
                       "weights/activations/KV (straight-through gradients). The output feeds "
                       "`rotaquant ptq --rotation-path` and `rotaquant rotate --rotation-path`. Under "
                       "`torchrun --nproc-per-node N` the batch is split across the GPUs.")
    add_model_args(p)
    from .learn.cli_args import add_optimize_args

    add_optimize_args(p)
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("analyze", help="layer-wise error of QuaRot/SpinQuant/SmoothQuant-style processing -> CSV, PNGs",
                       description="For each method, process a copy of the model, quantize it and compare "
                       "every decoder layer and submodule with the full-precision model (cosine, MSE; "
                       "each layer fed the FP input and its own input); also the kurtosis and channel "
                       "magnitudes of the linear inputs. Writes analysis.csv, summary.txt, "
                       "side_by_side.md, analysis.json and PNGs into --output.")
    add_model_args(p)
    from .eval.analyze_args import add_analyze_args

    add_analyze_args(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("demo", help="the main job: FP vs W4A4KV4 without and with rotation",
                       description="Runs the quick start job on smollm2-135m and WikiText-2: FP, "
                       "W4A4KV4 without rotation and W4A4KV4 with R1-R4 rotation, with the default "
                       "recipe (the spinquant preset with GPTQv2: GPTQ + clip search, asymmetric activations and KV, "
                       "o_proj per head), as a table (on GPU: GPTQ on 128 calibration windows, the whole test "
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

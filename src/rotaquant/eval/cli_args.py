"""``rotaquant eval --tasks ...``: the zero-shot flags and the command that maps them onto the job."""

from __future__ import annotations

import argparse

from ..io import atomic_write_json
from .loglikelihood import BOS_POLICIES
from .tasks import TASKS


def add_zeroshot_args(parser: argparse.ArgumentParser) -> None:
    """Flags of zero-shot evaluation (``--tasks`` switches it on)."""
    group = parser.add_argument_group(
        "zero-shot tasks",
        "With --tasks, the model is also scored on lm-evaluation-harness tasks (0-shot, its task "
        "definitions, local files under DATA_DIR/zeroshot) and the WikiText-2 perplexity is "
        "computed as well unless --no-ppl is given.")
    group.add_argument("--tasks", default=None, metavar="LIST",
                       help=f"comma-separated tasks or 'all' ({','.join(TASKS)})")
    group.add_argument("--limit", type=int, default=None, metavar="N",
                       help="only the first N items of each task (quick runs; default: all)")
    group.add_argument("--no-ppl", action="store_true",
                       help="with --tasks: skip the perplexity evaluation")
    group.add_argument("--task-batch-size", type=int, default=32, metavar="B",
                       help="sequences per forward pass for the tasks (default: %(default)s)")
    group.add_argument("--bos", default="tokenizer", choices=BOS_POLICIES,
                       help="BOS policy: the tokenizer's own special tokens (lm-eval >= 0.4.10, "
                       "default), never (lm-eval <= 0.4.9.1), or always prepend BOS")


def cmd_eval_tasks(args: argparse.Namespace, overrides: dict) -> int:
    """Run ``rotaquant eval --tasks``: print the table (and the perplexity), write ``--json``."""
    from ..jobs.eval import run_eval_tasks

    if args.limit is not None and args.limit < 1:
        from ..errors import ConfigError

        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    result = run_eval_tasks(None, tasks=args.tasks, limit=args.limit, task_batch_size=args.task_batch_size,
                            bos=args.bos, with_ppl=not args.no_ppl, progress=not args.quiet, **overrides)
    ppl = result["perplexity"]
    if ppl:
        print(f"{result['model']}: ppl={ppl['ppl']:.4f} windows={ppl['windows']} seqlen={ppl['seqlen']} "
              f"data={ppl['data']}/{ppl['split']}")
    limit = f", first {args.limit} items per task" if args.limit else ""
    print(f"{result['model']}: zero-shot accuracy (%, lm-eval definitions, 0-shot{limit})")
    print(result.pop("summary"))
    if args.json:
        atomic_write_json(args.json, result)
    return 0

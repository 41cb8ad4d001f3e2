"""Zero-shot accuracy on local task files with lm-evaluation-harness's definitions (0-shot).

Tasks: piqa, arc_easy, arc_challenge, hellaswag, winogrande, boolq, lambada_openai, openbookqa
(requests built in :mod:`rotaquant.eval.tasks`, scored in :mod:`rotaquant.eval.loglikelihood`).

Metrics, as lm-eval computes them:

* ``acc``: the choice with the largest summed log-likelihood is the gold one (first on ties);
* ``acc_norm``: the same after dividing each log-likelihood by the number of *characters* of the
  choice (piqa, arc, hellaswag, openbookqa);
* LAMBADA: ``acc`` = every token of the last word is the greedy argmax; ``perplexity`` =
  ``exp(-mean over items of the word's log-likelihood)``;
* ``*_stderr``: sample standard deviation / sqrt(n) (lm-eval's ``mean_stderr``); for LAMBADA's
  perplexity a delta-method estimate (lm-eval bootstraps it, so that one differs slightly);
* ``average``: the mean over the tasks of ``acc_norm`` where the task has it, else ``acc`` (the
  column the QuaRot/SpinQuant tables report).

BOS policy: by default the tokenizer's own (``bos="tokenizer"``), which is lm-eval >= 0.4.10
with ``add_bos_token`` unset; ``"never"`` reproduces lm-eval <= 0.4.9.1 and ``"always"``
prepends BOS to every context. Log-softmax is taken in float32 whatever the model's dtype.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from ..errors import ConfigError
from .loglikelihood import PairEncoder, score_requests
from .tasks import Doc, TaskDataError, get_task, load_docs, parse_tasks, zeroshot_dir

logger = logging.getLogger(__name__)

LM_EVAL_REFERENCE = "lm-evaluation-harness 0.4.13 task YAMLs, 0-shot"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def mean_stderr(values: list[float]) -> float | None:
    """Sample standard deviation (n - 1) over sqrt(n); None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def predictions(logliks: list[float], choices: tuple[str, ...]) -> tuple[int, int]:
    """``(argmax loglik, argmax loglik / len(choice))``, the first index winning ties."""
    norm = [ll / len(c) for ll, c in zip(logliks, choices, strict=True)]
    return max(range(len(logliks)), key=logliks.__getitem__), max(range(len(norm)), key=norm.__getitem__)


@dataclass
class TaskResult:
    """The metrics of one task (``metrics`` holds acc, acc_stderr, acc_norm, ... as present)."""

    task: str
    n: int
    metrics: dict[str, float | None]
    primary: str
    split: str
    requests: int
    forward_rows: int
    seconds: float
    samples: list[dict] | None = None

    @property
    def score(self) -> float:
        """The metric the papers' average uses (``acc_norm`` where present, else ``acc``)."""
        return self.metrics[self.primary]


@dataclass
class ZeroShotResult:
    """Per-task results plus the papers' average; ``to_dict`` is JSON-safe (no NaN)."""

    tasks: dict[str, TaskResult]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def average(self) -> float | None:
        scores = [t.score for t in self.tasks.values() if t.score is not None]
        return sum(scores) / len(scores) if scores else None

    def to_dict(self, samples: bool = False) -> dict:
        tasks = {}
        for name, res in self.tasks.items():
            d = asdict(res)
            if not samples:
                d.pop("samples")
            d["metrics"] = {k: _finite(v) for k, v in res.metrics.items()}
            tasks[name] = d
        return {"average": _finite(self.average), "average_of": {k: t.primary for k, t in self.tasks.items()},
                "tasks": tasks, "settings": self.settings, "seconds": self.seconds}

    def summary(self) -> str:
        """A plain-text table: one row per task (acc, acc_norm, stderr, n) and the average."""
        lines = [f"{'task':<15} {'n':>6} {'acc':>7} {'±':>6} {'acc_norm':>8} {'±':>6} {'other':>16} {'s':>7}"]
        fmt = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
        for name, res in self.tasks.items():
            m = res.metrics
            other = f"ppl {m['perplexity']:.3f}" if m.get("perplexity") is not None else ""
            lines.append(f"{name:<15} {res.n:>6} {fmt(m.get('acc')):>7} {fmt(m.get('acc_stderr')):>6} "
                         f"{fmt(m.get('acc_norm')):>8} {fmt(m.get('acc_norm_stderr')):>6} {other:>16} "
                         f"{res.seconds:>7.1f}")
        lines.append(f"{'average':<15} {'':>6} {fmt(self.average):>7}  (acc_norm where the task has it, else acc)")
        return "\n".join(lines)


def score_docs(docs: list[Doc], kind: str, scores: list, has_norm: bool = True,
               ) -> tuple[dict[str, float | None], list[dict]]:
    """Metrics of a task from its docs and the scores of their flattened requests, plus samples.

    ``kind`` is ``"choice"`` (acc, and acc_norm when ``has_norm``) or ``"cloze"`` (greedy acc and
    perplexity); ``scores`` are :class:`~rotaquant.eval.loglikelihood.Score` in request order.
    """
    acc, acc_norm, lls, samples, k = [], [], [], [], 0
    for doc in docs:
        got = scores[k : k + len(doc.requests)]
        k += len(doc.requests)
        ll = [s.loglik for s in got]
        if kind == "cloze":
            acc.append(float(got[0].greedy))
            lls.append(ll[0])
            samples.append({"loglik": ll[0], "greedy": got[0].greedy})
            continue
        pred, pred_norm = predictions(ll, doc.choices)
        acc.append(float(pred == doc.gold))
        acc_norm.append(float(pred_norm == doc.gold))
        samples.append({"logliks": ll, "gold": doc.gold, "pred": pred, "pred_norm": pred_norm})
    n = len(docs)
    metrics: dict[str, float | None] = {"acc": sum(acc) / n, "acc_stderr": mean_stderr(acc)}
    if kind == "cloze":
        mean_ll = sum(lls) / n
        ppl = math.exp(-mean_ll)
        se = mean_stderr(lls)
        metrics.update(perplexity=ppl, perplexity_stderr=None if se is None else ppl * se)
    elif has_norm:
        metrics.update(acc_norm=sum(acc_norm) / n, acc_norm_stderr=mean_stderr(acc_norm))
    return metrics, samples


def evaluate_task(model: torch.nn.Module, encoder: PairEncoder, task: str, *, limit: int | None = None,
                  batch_size: int = 32, batch_tokens: int | None = None,
                  data_dir: str | os.PathLike | None = None, max_length: int | None = None,
                  share_prefixes: bool = True, keep_samples: bool = False, progress: bool = True) -> TaskResult:
    """Evaluate one task (see :func:`evaluate_tasks`)."""
    spec = get_task(task)
    started = time.perf_counter()
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (or None for every item), got {limit}")
    docs = load_docs(spec.name, data_dir, limit)
    if not docs:
        raise TaskDataError(f"{spec.name}: its file holds no items (looked in {zeroshot_dir(data_dir)})")
    encoded = [encoder.encode_pair(ctx, cont) for doc in docs for ctx, cont in doc.requests]
    scores, stats = score_requests(model, encoded, batch_size=batch_size, batch_tokens=batch_tokens,
                                   max_length=max_length, share_prefixes=share_prefixes, progress=progress,
                                   desc=spec.name)
    metrics, samples = score_docs(docs, spec.kind, scores, spec.has_norm)
    if keep_samples:
        for sample, doc in zip(samples, docs, strict=True):
            sample["requests"] = [list(r) for r in doc.requests]
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = TaskResult(spec.name, len(docs), metrics, spec.primary, spec.split,
                        stats["requests"], stats["forward_rows"], time.perf_counter() - started,
                        samples if keep_samples else None)
    logger.info("%s: %s (%d items, %.1f s)", spec.name,
                ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None), len(docs), result.seconds)
    return result


def evaluate_tasks(
    model: torch.nn.Module,
    tokenizer,
    tasks: str | list[str] = "all",
    *,
    limit: int | None = None,
    batch_size: int = 32,
    batch_tokens: int | None = None,
    data_dir: str | os.PathLike | None = None,
    bos: str = "tokenizer",
    max_length: int | None = None,
    share_prefixes: bool = True,
    keep_samples: bool = False,
    progress: bool = True,
) -> ZeroShotResult:
    """Zero-shot accuracy of ``model`` on ``tasks`` with lm-eval's definitions.

    Args:
        model: a causal LM (not modified; evaluated in eval mode without gradients).
        tokenizer: its Hugging Face tokenizer.
        tasks: names (list or comma-separated string) from :data:`rotaquant.eval.tasks.TASKS`,
            or ``"all"``.
        limit: evaluate only the first ``limit`` items of each task (as lm-eval's ``--limit``).
        batch_size: sequences per forward pass (when ``batch_tokens`` is None).
        batch_tokens: fill each forward pass with sequences up to this many (padded) tokens
            instead (see :func:`~rotaquant.eval.loglikelihood.score_requests`); faster on a GPU.
        data_dir: folder holding ``zeroshot/`` (default: ``$ROTAQUANT_DATA_DIR`` or ``../shared/data``).
        bos: BOS policy, ``"tokenizer"``, ``"never"`` or ``"always"`` (see the module docstring).
        max_length: the model's window for left truncation (default: its max positions).
        share_prefixes: one forward serves every request whose input is a prefix of its row.
        keep_samples: keep per-item log-likelihoods and predictions in each :class:`TaskResult`.
        progress: tqdm bars.

    Raises:
        UnknownTaskError: a task name is unknown (the message lists the known ones).
        TaskDataError: a task file is missing (the message says where it looked) or malformed.
    """
    names = parse_tasks(tasks)
    encoder = PairEncoder(tokenizer, bos)
    started = time.perf_counter()
    results = {name: evaluate_task(model, encoder, name, limit=limit, batch_size=batch_size,
                                   batch_tokens=batch_tokens, data_dir=data_dir,
                                   max_length=max_length, share_prefixes=share_prefixes,
                                   keep_samples=keep_samples, progress=progress) for name in names}
    param = next(model.parameters())
    settings = {"limit": limit, "batch_size": batch_size, "batch_tokens": batch_tokens, "bos": bos, "share_prefixes": share_prefixes,
                "num_fewshot": 0, "definitions": LM_EVAL_REFERENCE, "data": str(zeroshot_dir(data_dir)),
                "dtype": str(param.dtype).replace("torch.", ""), "device": str(param.device)}
    return ZeroShotResult(results, settings, time.perf_counter() - started)

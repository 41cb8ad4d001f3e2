"""The ``rotaquant eval`` jobs: perplexity (:func:`run_eval`) and, with ``--tasks``, zero-shot tasks
and (optionally) perplexity on one load (:func:`run_eval_tasks`)."""

from __future__ import annotations

import logging
import time

from ..config import EvalConfig
from ..errors import ConfigError
from ..eval.api import evaluate
from ..eval.perplexity import PerplexityResult, perplexity
from ..io import atomic_write_json
from ..models.loading import load_model

logger = logging.getLogger(__name__)


def run_eval(config: EvalConfig | dict | None = None, progress: bool = True, **overrides) -> PerplexityResult:
    """Load ``config.model`` and evaluate its perplexity on ``config.data``/``config.split``."""
    cfg = config if isinstance(config, EvalConfig) else EvalConfig.load(config, **overrides)
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    result = perplexity(model, tokenizer, data=cfg.data, split=cfg.split, seqlen=cfg.seqlen,
                        batch_size=cfg.batch_size, max_windows=cfg.max_windows, data_dir=cfg.data_dir,
                        progress=progress)
    result.extra.update(model=cfg.model, config=cfg.to_dict())
    return result


def run_eval_tasks(
    config: EvalConfig | dict | None = None,
    *,
    tasks: str | list[str] | None = None,
    limit: int | None = None,
    task_batch_size: int | None = None,
    bos: str | None = None,
    with_ppl: bool | None = None,
    json_path: str | None = None,
    progress: bool = True,
    preloaded: tuple | None = None,
    **overrides,
) -> dict:
    """Zero-shot accuracy on the config's ``tasks`` and, unless its ``ppl`` is False, the perplexity.

    Args:
        config: the settings of ``rotaquant eval`` (``EvalConfig`` or its keys); ``tasks``,
            ``limit`` (= ``task_limit``), ``task_batch_size``, ``bos`` and ``with_ppl`` (= ``ppl``)
            override its keys of the same meaning.
        json_path: write the result there (atomically, only on success).
        preloaded: ``(model, tokenizer)`` to evaluate instead of loading ``config.model`` (not modified).

    Returns ``{"model", "config", "perplexity": PerplexityResult dict or None, "zeroshot":
    ZeroShotResult dict, "seconds": {...}, "summary": the accuracy table}``.
    """
    if isinstance(tasks, list):
        tasks = ",".join(tasks)
    named = {"tasks": tasks, "task_limit": limit, "task_batch_size": task_batch_size, "bos": bos, "ppl": with_ppl}
    overrides.update({k: v for k, v in named.items() if v is not None})
    if isinstance(config, EvalConfig):
        config = config.to_dict()
    cfg = EvalConfig.load(config, **overrides)
    if not cfg.tasks:
        raise ConfigError("no zero-shot tasks given: set tasks (--tasks), e.g. 'piqa,arc_easy' or 'all'")
    started = time.perf_counter()
    model, tokenizer = preloaded or load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    seconds = {"load": time.perf_counter() - started}
    measured = evaluate(model, tokenizer, cfg, ppl=cfg.ppl, progress=progress)
    ppl, zs = measured["perplexity"], measured["zeroshot"]
    if ppl:
        seconds["perplexity"] = ppl["seconds"]
    seconds["zeroshot"] = zs["seconds"]
    seconds["total"] = time.perf_counter() - started
    summary = zs.pop("summary")
    result = {"model": cfg.model, "config": cfg.to_dict(), "perplexity": ppl, "zeroshot": zs,
              "seconds": seconds, "summary": summary}
    if json_path:
        atomic_write_json(json_path, result)
    return result

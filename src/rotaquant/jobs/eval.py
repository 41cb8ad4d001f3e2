"""The ``rotaquant eval`` jobs: perplexity (:func:`run_eval`) and, with ``--tasks``, zero-shot tasks
and (optionally) perplexity on one load (:func:`run_eval_tasks`)."""

from __future__ import annotations

import logging
import time

from ..config import EvalConfig
from ..eval.perplexity import PerplexityResult, perplexity
from ..eval.zeroshot import evaluate_tasks
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
    tasks: str | list[str] = "all",
    limit: int | None = None,
    task_batch_size: int = 32,
    bos: str = "tokenizer",
    with_ppl: bool = True,
    json_path: str | None = None,
    progress: bool = True,
    preloaded: tuple | None = None,
    **overrides,
) -> dict:
    """Zero-shot accuracy on ``tasks`` and, unless ``with_ppl`` is False, the perplexity of ``config``.

    Args:
        config: the model/data settings of ``rotaquant eval`` (``EvalConfig`` or its keys).
        tasks, limit, task_batch_size, bos: see :func:`rotaquant.eval.zeroshot.evaluate_tasks`.
        with_ppl: also evaluate the perplexity (WikiText-2 test by default) of the same model.
        json_path: write the result there (atomically, only on success).
        preloaded: ``(model, tokenizer)`` to evaluate instead of loading ``config.model`` (not modified).

    Returns ``{"model", "config", "perplexity": PerplexityResult dict or None, "zeroshot":
    ZeroShotResult dict, "seconds": {...}}``.
    """
    cfg = config if isinstance(config, EvalConfig) else EvalConfig.load(config, **overrides)
    started = time.perf_counter()
    model, tokenizer = preloaded or load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    seconds = {"load": time.perf_counter() - started}
    ppl = None
    if with_ppl:
        ppl = perplexity(model, tokenizer, data=cfg.data, split=cfg.split, seqlen=cfg.seqlen,
                         batch_size=cfg.batch_size, max_windows=cfg.max_windows, data_dir=cfg.data_dir,
                         progress=progress)
        seconds["perplexity"] = ppl.seconds
    zs = evaluate_tasks(model, tokenizer, tasks, limit=limit, batch_size=task_batch_size, data_dir=cfg.data_dir,
                        bos=bos, progress=progress)
    seconds["zeroshot"] = zs.seconds
    seconds["total"] = time.perf_counter() - started
    result = {"model": cfg.model, "config": cfg.to_dict(), "perplexity": ppl.to_dict() if ppl else None,
              "zeroshot": zs.to_dict(), "seconds": seconds, "summary": zs.summary()}
    if json_path:
        atomic_write_json(json_path, result)
    return result

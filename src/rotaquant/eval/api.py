"""``rotaquant.evaluate``: the in-memory evaluation verb (perplexity and zero-shot accuracy)."""

from __future__ import annotations

import os

from torch import nn

from ..config import EvaluateConfig
from .perplexity import perplexity
from .zeroshot import evaluate_tasks


def load_eval_config(config: EvaluateConfig | dict | str | os.PathLike | None = None, **overrides) -> EvaluateConfig:
    """A validated :class:`EvaluateConfig` from a config, a dict, a YAML path or keywords."""
    if isinstance(config, EvaluateConfig):
        if not overrides:
            return config
        config = {k: getattr(config, k) for k in EvaluateConfig.model_fields}
    return EvaluateConfig.load(config, **overrides)


def evaluate(model: nn.Module, tokenizer, config: EvaluateConfig | dict | str | None = None, *,
             ppl: bool = True, progress: bool = True, **overrides) -> dict:
    """Perplexity of ``model`` and, with ``tasks``, zero-shot accuracy. Does not change the model.

    Args:
        model, tokenizer: a causal LM in memory and its tokenizer.
        config: an :class:`~rotaquant.config.EvaluateConfig` or its keys as a dict (``data``,
            ``split``, ``seqlen``, ``max_windows``, ``batch_size``, ``tasks``, ``task_limit``, ...);
            a string is the ``data`` key (a named set such as ``wikitext2``, or a local path).
            ``overrides`` are more keys.
        ppl: compute the perplexity (False: only the tasks).

    ``tasks`` is ``"all"`` or comma-separated lm-eval task names (see :mod:`rotaquant.eval.tasks`);
    ``task_limit`` keeps the first N items of each. Returns ``{"perplexity": {...} or None,
    "zeroshot": {...} or None}`` (JSON-safe dicts; each has ``seconds``).
    """
    if isinstance(config, str):
        config = {"data": config}
    cfg = load_eval_config(config, **overrides)
    result = {"perplexity": None, "zeroshot": None}
    if ppl:
        result["perplexity"] = perplexity(model, tokenizer, data=cfg.data, split=cfg.split, seqlen=cfg.seqlen,
                                          batch_size=cfg.batch_size, max_windows=cfg.max_windows,
                                          data_dir=cfg.data_dir, progress=progress).to_dict()
    if cfg.tasks:
        zs = evaluate_tasks(model, tokenizer, cfg.tasks, limit=cfg.task_limit, batch_size=cfg.task_batch_size,
                            data_dir=cfg.data_dir, bos=cfg.bos, progress=progress)
        result["zeroshot"] = {**zs.to_dict(), "summary": zs.summary()}
    return result

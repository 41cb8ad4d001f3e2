"""Evaluation entry points: ``rotaquant.evaluate.perplexity`` and ``evaluate.run``."""

from __future__ import annotations

from .config import EvalConfig
from .eval.perplexity import PerplexityResult, perplexity
from .models.loading import load_model

__all__ = ["PerplexityResult", "perplexity", "run"]


def run(config: EvalConfig | dict | None = None, progress: bool = True, **overrides) -> PerplexityResult:
    """Load ``config.model`` and evaluate its perplexity on ``config.data``/``config.split``."""
    cfg = config if isinstance(config, EvalConfig) else EvalConfig.load(config, **overrides)
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    result = perplexity(
        model,
        tokenizer,
        data=cfg.data,
        split=cfg.split,
        seqlen=cfg.seqlen,
        batch_size=cfg.batch_size,
        max_windows=cfg.max_windows,
        data_dir=cfg.data_dir,
        progress=progress,
    )
    result.extra.update(model=cfg.model, config=cfg.to_dict())
    return result

"""``rotaquant.evaluate``: the in-memory evaluation verb (perplexity and zero-shot accuracy)."""

from __future__ import annotations

import os

from torch import nn

from .perplexity import perplexity
from .zeroshot import evaluate_tasks


def evaluate(model: nn.Module, tokenizer, data: str = "wikitext2", split: str = "test", *, seqlen: int = 2048,
             batch_size: int = 1, max_windows: int | None = None, tasks: str | list[str] | None = None,
             limit: int | None = None, data_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Perplexity of ``model`` on ``data``/``split`` and, with ``tasks``, zero-shot accuracy.

    Does not change the model. ``tasks`` is ``"all"``, a comma-separated string or a list of
    lm-eval task names (see :mod:`rotaquant.eval.tasks`); ``limit`` keeps the first N items of
    each. Returns ``{"perplexity": {...}, "zeroshot": {...} or None}`` (JSON-safe dicts).
    """
    ppl = perplexity(model, tokenizer, data=data, split=split, seqlen=seqlen, batch_size=batch_size,
                     max_windows=max_windows, data_dir=data_dir, progress=progress)
    zs = None
    if tasks:
        zs = evaluate_tasks(model, tokenizer, tasks, limit=limit, data_dir=data_dir, progress=progress).to_dict()
    return {"perplexity": ppl.to_dict(), "zeroshot": zs}

"""Save a (rotated) model as a standard Hugging Face folder that plain transformers reloads."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from torch import nn

from ..io import atomic_directory

logger = logging.getLogger(__name__)


def export_hf(model: nn.Module, tokenizer, output: str | os.PathLike, metadata: dict | None = None,
              overwrite: bool = False) -> Path:
    """Write ``model`` (safetensors + config.json) and ``tokenizer`` to ``output``, atomically.

    Online transforms (hooks, attention-function transforms) are NOT part of the folder: export
    a model rotated with ``online=False`` if it must reload as the same function. ``metadata``
    is written to ``rotaquant.json`` beside the weights. Nothing is written if anything fails.
    """
    with atomic_directory(output, overwrite=overwrite) as tmp:
        impl = getattr(model.config, "_attn_implementation", None)
        if impl == "rotaquant":
            raise ValueError("this model has online rotations (attention transforms); export it with online=False")
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if metadata is not None:
            (tmp / "rotaquant.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
    logger.info("wrote %s", output)
    return Path(output)

"""Save a (rotated) model as a standard Hugging Face folder that plain transformers reloads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from ..io import atomic_directory, to_json

logger = logging.getLogger(__name__)


def export_hf(model: nn.Module, tokenizer, output: str | os.PathLike, metadata: dict | None = None,
              overwrite: bool = False, files: dict[str, bytes] | None = None) -> Path:
    """Write ``model`` (safetensors + config.json) and ``tokenizer`` to ``output``, atomically.

    Stages (online rotations, activation/KV quantizers) cannot be expressed in a plain folder,
    so a model that has any is refused: export a model rotated with ``online=False``. Weights
    are written as they are (fake-quantized weights dequantized); rotaquant's records
    (``rq_weight`` codes) are left out. ``metadata`` is written to ``rotaquant.json`` beside
    the weights, and ``files`` (name -> bytes) into the folder as well. Nothing is written if
    anything fails; an existing ``output`` is replaced only with ``overwrite`` and only if
    rotaquant wrote it.
    """
    from ..stages import stage_map

    sites = stage_map(model)
    if sites:
        first = next(iter(sites))
        raise ValueError(f"this model has online stages ({len(sites)} sites, e.g. {first}: {sites[first]}) that a "
                         "plain transformers folder cannot hold; export a model rotated with online=False")
    with atomic_directory(output, overwrite=overwrite) as tmp:
        state = {k: v for k, v in model.state_dict().items() if ".rq_" not in f".{k}"}
        model.save_pretrained(tmp, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if metadata is not None:
            (tmp / "rotaquant.json").write_text(to_json(metadata) + "\n")
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
    logger.info("wrote %s", output)
    return Path(output)

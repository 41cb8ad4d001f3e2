"""The ``rotaquant rotate`` job: load a model, rotate R1/R2 (fused), export an HF folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..config import RotateConfig
from ..export.hf import export_hf
from ..io import check_writable_output
from ..models.loading import load_model
from ..preflight import check_rotation_file
from ..rotation.matrices import RotationFile, rotation_file_bytes
from ..rotation.rotate import rotate

logger = logging.getLogger(__name__)
ROTATIONS_FILE = "rotaquant_rotations.safetensors"


def run_rotate(config: RotateConfig | dict, progress: bool = True) -> Path:
    """Rotate ``config.model`` with fused R1/R2 only and write a standard HF folder.

    Online R3/R4 are hooks that a plain transformers model cannot carry, so this export leaves
    them out (they are part of the quantized exports); the fused matrices are saved beside the
    weights as ``rotaquant_rotations.safetensors``.
    """
    cfg = config if isinstance(config, RotateConfig) else RotateConfig.load(config)
    # everything that can be checked without the model is checked before loading it
    check_writable_output(cfg.output, "dir", cfg.overwrite)
    rotation_path = None
    if cfg.rotation_path is not None:
        check_rotation_file(cfg.rotation_path)
        rotation_path = RotationFile(cfg.rotation_path, allow_partial=cfg.allow_partial_rotation)
    started = time.perf_counter()
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    state = rotate(model, cfg.rotation_config, mode=cfg.rotation_mode, seed=cfg.seed,
                   rotation_path=rotation_path, online=False, progress=progress, verify=cfg.verify)
    meta = {"rotaquant": cfg.to_dict(), "fused_modules": state.fused_modules,
            "folded_norms": state.folded_norms, "untied_embeddings": state.untied,
            "online_rotations": "not included (R3/R4 are online; see rotaquant ptq)"}
    # the matrices go into the same atomic folder: no output without them
    files = {ROTATIONS_FILE: rotation_file_bytes(state.store.state_dict())} if state.store is not None else None
    out = export_hf(model, tokenizer, cfg.output, metadata=meta, overwrite=cfg.overwrite, files=files)
    logger.info("rotate finished in %.1f s", time.perf_counter() - started)
    return out

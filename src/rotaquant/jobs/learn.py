"""The ``rotaquant optimize`` job: load a model, learn R1/R2 (:func:`rotaquant.learn_rotations`), write
the rotation files (rotaquant safetensors, optionally SpinQuant's format) and the JSON summary."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ..data import check_calibration_source
from ..errors import ConfigError
from ..io import atomic_write_bytes, atomic_write_json, check_writable_output
from ..learn.api import learn_rotations, load_config
from ..learn.config import OptimizeConfig
from ..learn.distributed import init_distributed
from ..learn.train import LearnResult
from ..models.loading import load_model
from ..preflight import check_rotation_file
from .files import CheckpointFile, write_rotation_file

logger = logging.getLogger(__name__)


def write_rotations(path: str | os.PathLike, matrices: dict[str, torch.Tensor], cfg: OptimizeConfig) -> Path:
    """The learned matrices as a rotaquant safetensors file (atomically)."""
    meta = {"learned": "cayley", "seed": str(cfg.seed), "bits": cfg.bits_label(), "rotation_config": cfg.rotation_config}
    return write_rotation_file(path, matrices, meta)


def write_spinquant(path: str | os.PathLike, matrices: dict[str, torch.Tensor]) -> Path:
    """SpinQuant's torch format: ``R1`` and ``model.layers.{i}.self_attn.R2``."""
    import io

    out = {}
    for key, mat in matrices.items():
        name, _, group = key.partition("@")
        if name == "r1" and not group:
            out["R1"] = mat
        elif name == "r2" and group.startswith("layers."):
            out[f"model.{group}.self_attn.R2"] = mat
        else:
            raise ConfigError(f"matrix {key!r} has no place in SpinQuant's format (it knows R1 and per-layer R2); "
                              "write the rotaquant safetensors file instead")
    buf = io.BytesIO()
    torch.save(out, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _check_outputs(output, spinquant_output, json_path, checkpoint, overwrite: bool) -> None:
    """Every file the run will write, checked before the model is loaded (nothing is written)."""
    for path in (output, spinquant_output):
        if path is not None:
            check_writable_output(path, "file", overwrite)
    for path in (json_path, checkpoint):  # a report and a checkpoint are replaced freely
        if path is not None:
            check_writable_output(path, "file", overwrite=True)


def optimize(
    config: OptimizeConfig | dict | str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    spinquant_output: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    json_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    preloaded: tuple | None = None,
    **overrides,
) -> dict:
    """Learn the fused rotations (R1, R2 per layer) of a model with Cayley SGD; returns a summary.

    Loads ``config.model`` (or uses ``preloaded=(model, tokenizer)``, which is mutated), runs
    :func:`rotaquant.learn_rotations` (calibration windows, training through fake-quantized
    weights/activations/KV with STE) and writes ``output`` (rotaquant safetensors; ``rotaquant ptq/rotate --rotation-path`` read it)
    and optionally ``spinquant_output`` (SpinQuant's torch format). Under ``torchrun`` the batch
    is split across the ranks and only rank 0 writes. ``checkpoint`` (default:
    ``<output>.ckpt``, removed once the output is written) is written every ``checkpoint_every``
    steps; ``resume`` continues from it.
    """
    cfg = load_config(config, **overrides)
    default_checkpoint = checkpoint is None and output is not None
    if default_checkpoint:
        checkpoint = f"{output}.ckpt"
    if resume and checkpoint is None:
        raise ConfigError("resume needs a checkpoint path (or an output path, whose .ckpt is the default)")
    resuming = resume and Path(checkpoint).is_file()
    if resume and not resuming:
        logger.warning("no checkpoint at %s: starting from scratch", checkpoint)
    # a run that continues its own checkpoint may replace the output it had started; anything else
    # (a finished output, whose checkpoint is gone) is replaced only with overwrite
    _check_outputs(output, spinquant_output, json_path, checkpoint, overwrite or resuming)
    check_calibration_source(cfg.data, cfg.split, cfg.data_dir, cfg.allow_test_calibration)
    if cfg.init_path:
        check_rotation_file(cfg.init_path)
    ctx = init_distributed()
    try:
        t0 = time.perf_counter()
        device = ctx.device(cfg.device)
        if preloaded is None:
            model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=str(device))
        else:
            model, tokenizer = preloaded
        writer = CheckpointFile(checkpoint) if ctx.main and checkpoint is not None else None
        result: LearnResult = learn_rotations(model, tokenizer, cfg, checkpoint=writer, resume=resume, ctx=ctx,
                                              progress=progress)
        summary = {
            "config": cfg.to_dict(),
            "bits": cfg.bits_label(),
            "world_size": ctx.world,
            "main": ctx.main,
            "device": str(device),
            "losses": result.losses,
            "grad_norms": result.grad_norms,
            "r1_step_sizes": result.steps,
            "first_loss": result.losses[0] if result.losses else None,
            "last_loss": result.losses[-1] if result.losses else None,
            "steps_run": result.steps_run,
            "resumed_from": result.resumed_from,
            "seconds_per_step": result.seconds_per_step,
            "step_seconds": result.step_seconds,
            "median_step_seconds": result.median_step_seconds,
            "peak_memory_gib": result.peak_memory_gib,
            "orthogonality_error": result.orthogonality_error,
            "rank_divergence": result.rank_divergence,
            "seconds": time.perf_counter() - t0,
            "output": str(output) if output else None,
        }
        if ctx.main:
            logger.info("learned %s rotations: loss %s -> %s in %d steps; writing %s", summary["bits"],
                        summary["first_loss"], summary["last_loss"], result.steps_run, output)
            if output is not None:
                write_rotations(output, result.matrices, cfg)
            if spinquant_output is not None:
                write_spinquant(spinquant_output, result.matrices)
            if json_path:
                atomic_write_json(json_path, summary)
            if default_checkpoint and output is not None and checkpoint is not None:
                Path(checkpoint).unlink(missing_ok=True)  # the run finished: its output replaces it
        ctx.barrier()
        summary["matrices"] = result.matrices
        return summary
    finally:
        ctx.close()

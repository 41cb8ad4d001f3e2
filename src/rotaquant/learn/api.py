"""``rotaquant.learn_rotations``: the in-memory verb that learns R1/R2 of a loaded model.

It reads nothing but the model and the calibration text and writes no files (an optional
checkpoint goes to a writer object the caller passes); the job that loads a model and writes
rotation files and checkpoints is :func:`rotaquant.jobs.learn.optimize`.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..data import calibration_windows
from ..errors import ConfigError
from ..rotation.matrices import RotationStore
from ..rotation.rotate import resolve_spec
from ..rotation.spec import RotationSpec
from .config import OptimizeConfig
from .distill import teacher_targets
from .distributed import DistContext
from .train import Checkpointer, LearnResult, autocast_dtype, learn
from .trainable import make_trainable


def load_config(config: OptimizeConfig | dict | str | os.PathLike | None = None, **overrides) -> OptimizeConfig:
    """A validated :class:`OptimizeConfig` from a config, a dict, a YAML path or keywords."""
    if isinstance(config, OptimizeConfig):
        if not overrides:
            return config
        config = config.to_dict()
    return OptimizeConfig.load(config, **overrides)


def learn_rotations(
    model: nn.Module,
    tokenizer=None,
    config: OptimizeConfig | dict | str | os.PathLike | None = None,
    *,
    windows: torch.Tensor | None = None,
    checkpoint: Checkpointer | None = None,
    resume: bool = False,
    ctx: DistContext | None = None,
    progress: bool = True,
    **overrides,
) -> LearnResult:
    """Learn the fused rotations (R1, R2 per layer) of ``model`` with Cayley SGD; returns them.

    ``model`` is mutated IN PLACE: its norms are folded, online R3/R4 stages added and its
    linears wrapped by the trainable rotations (use a fresh copy; apply the result to another
    with ``rotaquant.rotate(model, rotation_path=...)`` after writing it, or with a
    :class:`~rotaquant.rotation.matrices.RotationStore`).

    Args:
        model: a transformers causal LM, not rotated before.
        tokenizer: cuts the calibration windows (not needed when ``windows`` are given).
        config: an :class:`OptimizeConfig`, its keys as a dict or a YAML path; ``overrides`` are
            more keys (``w_bits=4, a_bits=4, iterations=50, ...``).
        windows: token ids ``[nsamples, seqlen]`` to learn on (default: the config's data,
            sampled with its seed; the WikiText-2 test split is refused).
        checkpoint: where the state goes every ``checkpoint_every`` steps, an object with
            ``read()``/``write(state)`` (the optimize job passes a
            :class:`~rotaquant.jobs.files.CheckpointFile`); ``resume`` continues from it.
        ctx: the ranks of a ``torchrun`` run (default: this process alone).

    With ``loss: kl_top`` the unmodified model first predicts the windows once (the teacher,
    :mod:`rotaquant.learn.distill`); every rank does so for all windows, before any sharding.

    Returns:
        :class:`~rotaquant.learn.train.LearnResult`: ``matrices`` (``name@group`` -> float64),
        losses, gradient norms, step sizes and timings.
    """
    cfg = load_config(config, **overrides)
    spec = resolve_spec(model, cfg.rotation_config)
    if not isinstance(spec, RotationSpec):
        raise ConfigError(f"{type(model).__name__} is registered with functions, not a rotation config; "
                          "learning needs a config (register the model with a YAML config)")
    store = RotationStore(spec, model.config, seed=cfg.seed, mode=cfg.init_mode)
    if cfg.init_path:
        store.load(cfg.init_path, allow_partial=cfg.allow_partial_rotation)
    if windows is None:
        if tokenizer is None:
            raise ConfigError("learn_rotations needs calibration text: pass tokenizer= (or windows=)")
        windows = calibration_windows(tokenizer, cfg.nsamples, cfg.seqlen, cfg.data, cfg.split, cfg.seed,
                                      cfg.data_dir, allow_test=cfg.allow_test_calibration)
    teacher = None
    if cfg.loss == "kl_top":  # the FP model's predictions, before anything is folded or quantized
        device = next(model.parameters()).device
        teacher = teacher_targets(model, windows, cfg.distill_top_k, cfg.micro_batch_size or cfg.batch_size,
                                  autocast_dtype(cfg, device), progress=progress and (ctx is None or ctx.main))
    tm = make_trainable(model, spec, store, cfg, online=cfg.online_rotations, ste=cfg.ste)
    tm.rotations.to(next(model.parameters()).device)
    return learn(tm, windows, cfg, ctx, checkpoint=checkpoint, resume=resume, progress=progress, teacher=teacher)

"""The rotation-learning loop: fake-quantized forward, cross-entropy, Cayley steps, checkpoints.

Data order is a pure function of (seed, step): the windows of step ``s`` are a slice of the
permutation of epoch ``s * batch // nsamples``, so a run resumed from a checkpoint (matrices,
optimizer state, losses) sees exactly the batches the uninterrupted run would have seen and
ends with the same matrices (bit for bit on CPU; on GPU up to the nondeterminism of some
CUDA backward kernels).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .cayley import CayleyAdam, CayleySGD, orthogonality_error
from .config import OptimizeConfig
from .distill import TeacherTargets, kl_top_loss
from .distributed import DistContext, shard_frozen_model
from .trainable import TrainableModel, store_key

logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "rotaquant-learn-checkpoint-v1"


@dataclass
class LearnResult:
    """Learned matrices (``name@group`` -> float64) and what the run measured."""

    matrices: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    steps_run: int = 0
    resumed_from: int = 0
    seconds_per_step: float | None = None
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step run (the first warms up)
    peak_memory_gib: float | None = None
    orthogonality_error: float = 0.0
    rank_divergence: float = 0.0

    @property
    def median_step_seconds(self) -> float | None:
        """The median step time after the first (which compiles kernels and projects the starting
        matrices), or the first when it is the only one."""
        later = self.step_seconds[1:] or self.step_seconds
        return statistics.median(later) if later else None


def batch_indices(step: int, nsamples: int, batch: int, seed: int) -> torch.Tensor:
    """The global batch of ``step``: consecutive slices of a seeded permutation per epoch."""
    out, start = [], step * batch
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), nsamples)
        perm = torch.randperm(nsamples, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.extend(perm[offset:offset + batch - len(out)].tolist())
    return torch.tensor(out)


def lr_factor(step: int, total: int, schedule: str) -> float:
    if schedule == "constant":
        return 1.0
    frac = step / total
    return 1.0 - frac if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))


def make_optimizer(cfg: OptimizeConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return CayleyAdam(params, lr=cfg.lr, step_norm=cfg.cayley_step_norm)
    return CayleySGD(params, lr=cfg.lr, momentum=cfg.momentum, step_norm=cfg.cayley_step_norm)


def autocast_dtype(cfg: OptimizeConfig, device: torch.device) -> torch.dtype | None:
    choice = cfg.autocast
    if choice == "auto":
        choice = "bf16" if device.type == "cuda" else "none"
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


# -- checkpoints ---------------------------------------------------------------------------
class Checkpointer(Protocol):
    """Where :func:`learn` keeps its checkpoint. The job that runs the loop provides it
    (:class:`rotaquant.jobs.files.CheckpointFile` keeps one file, replaced atomically), so the
    training loop itself writes no files."""

    def read(self) -> Any | None:
        """The last state written, or None if there is none."""

    def write(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (replacing the previous one)."""


def checkpoint_state(step: int, cfg: OptimizeConfig, tm: TrainableModel, opt: torch.optim.Optimizer,
                     losses: list[float]) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly: matrices, optimizer state, losses."""
    return {"format": CHECKPOINT_FORMAT, "step": step, "config": cfg.fingerprint(),
            "rotations": tm.rotations.state(), "optimizer": opt.state_dict(), "losses": list(losses)}


def restore_checkpoint(ckpt: Any, where: str, cfg: OptimizeConfig, tm: TrainableModel,
                       opt: torch.optim.Optimizer) -> tuple[int, list]:
    """Restore matrices and optimizer state from ``ckpt`` (read from ``where``); returns
    (next step, losses so far). Mutates ``tm.rotations`` and ``opt``."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{where} is not a rotaquant learning checkpoint")
    now, then = cfg.fingerprint(), ckpt["config"]
    differ = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    if differ:
        raise ConfigError(f"checkpoint {where} was made with other settings ({', '.join(differ)}); resuming would not "
                          "give the run you asked for. Use the same settings, or start without --resume")
    saved = ckpt["rotations"]
    with torch.no_grad():
        for key, param in zip(tm.rotations.keys, tm.rotations.matrices, strict=True):
            param.copy_(saved[store_key(key)].to(param.dtype))
    opt.load_state_dict(ckpt["optimizer"])
    return int(ckpt["step"]), list(ckpt["losses"])


def set_checkpointing(model, on: bool) -> None:
    """Turn transformers' activation (gradient) checkpointing of the decoder layers on or off."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20 names it so
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif hasattr(model, "gradient_checkpointing_enable"):
        if on:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()


# -- the loop ------------------------------------------------------------------------------
def _loss(model, ids: torch.Tensor, amp: torch.dtype | None, targets: tuple | None = None) -> torch.Tensor:
    """Cross-entropy on the next token, or with ``targets`` (``TeacherTargets.take``) the KL-top loss."""
    with torch.autocast(device_type=ids.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = model(input_ids=ids, use_cache=False).logits
    if targets is not None:
        return kl_top_loss(logits, *targets)
    logits = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def learn(tm: TrainableModel, windows: torch.Tensor, cfg: OptimizeConfig, ctx: DistContext | None = None,
          checkpoint: Checkpointer | None = None, resume: bool = False, progress: bool = True,
          callback: Callable[[int, float], None] | None = None, teacher: TeacherTargets | None = None) -> LearnResult:
    """Train the rotations of ``tm`` on ``windows`` ``[nsamples, seqlen]``; returns the matrices.

    Mutates ``tm.rotations`` (the matrices). The batch of each step is split across the ranks
    of ``ctx``; ``callback(step, loss)`` runs after each step (on every rank). ``checkpoint``
    is a writer object from the calling job (the loop writes no files itself): the main rank
    hands it the state every ``checkpoint_every`` steps and at the end; with ``resume`` the loop
    continues from ``checkpoint.read()`` when that holds a state. ``teacher``: the FP model's
    predictions for ``windows`` (:func:`~rotaquant.learn.distill.teacher_targets`), needed by
    ``loss: kl_top``.
    """
    ctx = ctx or DistContext()
    model, params = tm.model, list(tm.rotations.matrices)
    device = params[0].device
    if cfg.batch_size % ctx.world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {ctx.world} ranks")
    local = cfg.batch_size // ctx.world
    micro = min(cfg.micro_batch_size or local, local)
    if local % micro:
        raise ConfigError(f"micro_batch_size {micro} does not divide the per-rank batch {local}")
    amp = autocast_dtype(cfg, device)
    if (cfg.loss == "kl_top") != (teacher is not None):
        raise ConfigError("loss kl_top needs the teacher's predictions (teacher=) and loss ce takes none")
    if teacher is not None and teacher.indices.shape[:2] != windows.shape:
        raise ConfigError(f"teacher predictions cover {tuple(teacher.indices.shape[:2])} positions, the windows "
                          f"{tuple(windows.shape)}")
    if cfg.fsdp:
        if tm.layers is None:
            raise ConfigError("fsdp needs the decoder layers of the trainable model (make_trainable records them)")
        shard_frozen_model(model, tm.layers, ctx, device)
    opt = make_optimizer(cfg, params)
    start, losses, grad_norms, steps = 0, [], [], []
    saved = checkpoint.read() if resume and checkpoint is not None else None
    if saved is not None:
        start, losses = restore_checkpoint(saved, str(checkpoint), cfg, tm, opt)
        logger.info("resumed from %s at step %d", checkpoint, start)
    if cfg.gradient_checkpointing:
        set_checkpointing(model, True)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(range(start, cfg.iterations), desc="learning rotations", unit="step", initial=start,
               total=cfg.iterations, disable=not (progress and ctx.main))
    t0, timed, step_seconds = time.perf_counter(), 0, []
    for step in bar:
        t_step = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.iterations, cfg.lr_schedule)
        idx = batch_indices(step, windows.shape[0], cfg.batch_size, cfg.seed)[ctx.rank * local:(ctx.rank + 1) * local]
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for m0 in range(0, local, micro):
            rows = idx[m0:m0 + micro]
            ids = windows[rows].to(device)
            targets = teacher.take(rows, device) if teacher is not None else None
            loss = _loss(model, ids, amp, targets) * (ids.shape[0] / local)
            loss.backward()
            total += loss.item()
        ctx.all_reduce_mean_([p.grad for p in params])
        grad_norm = torch.sqrt(sum(p.grad.double().square().sum() for p in params)).item()
        if not math.isfinite(grad_norm):  # one check (and one sync) covers every matrix, on every rank
            raise FloatingPointError(f"step {step}: non-finite gradient of the rotations; lower the lr or use autocast none")
        opt.step()
        # the step actually taken by R1 (the Cayley step is capped at 2q/||W||)
        step_size = opt.state[params[0]].get("last_alpha", 0.0)
        total = ctx.mean(total, device)
        losses.append(total)
        grad_norms.append(grad_norm)
        steps.append(step_size)
        timed += 1
        step_seconds.append(time.perf_counter() - t_step)  # synchronized: total and the gradient norm were read
        bar.set_postfix(loss=f"{total:.4f}", lr=f"{opt.param_groups[0]['lr']:.3g}", step=f"{step_size:.3g}",
                        grad=f"{grad_norm:.3g}")
        if callback is not None:
            callback(step, total)
        if checkpoint is not None and ctx.main and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.iterations):
            checkpoint.write(checkpoint_state(step + 1, cfg, tm, opt, losses))
        ctx.barrier()
    elapsed = time.perf_counter() - t0
    model.eval()
    if cfg.gradient_checkpointing:
        set_checkpointing(model, False)
    masters = {i: opt.state[p]["master"] for i, p in enumerate(params) if "master" in opt.state[p]}
    result = LearnResult(
        matrices=tm.rotations.state(masters), losses=losses, grad_norms=grad_norms, steps=steps, steps_run=timed, resumed_from=start,
        seconds_per_step=elapsed / timed if timed else None, step_seconds=step_seconds,
        peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        rank_divergence=ctx.max_divergence(params),
    )
    result.orthogonality_error = max(orthogonality_error(m) for m in result.matrices.values())
    return result

"""Data parallelism for rotation learning through ``torch.distributed``.

Under ``torchrun --nproc-per-node N`` every rank holds the (frozen) model and the same
rotations, runs its slice of each global batch, and the rotation gradients are averaged with
one ``all_reduce`` per step, which is what DDP does for its parameters. DDP itself is not
used because the trainable matrices are not the parameters of a module that is called (they
reach the layers through parametrizations), and the model's own parameters are frozen, so
there is nothing else to synchronize. Every rank then takes the same optimizer step, so the
matrices stay identical; they are checked against rank 0 at the end.

Scaling to a 70B model: data parallelism needs the whole model on every GPU, which holds up to
roughly 30B parameters in bf16 on an 80-140 GB GPU with activation checkpointing and
micro-batch 1. A 70B model (140 GB in bf16) needs its frozen weights sharded: FSDP2
(``torch.distributed.fsdp.fully_shard`` on each decoder layer, then the model) all-gathers one
layer at a time for the forward, the checkpointed recomputation and the backward, so each of
8 GPUs holds 1/8 of the weights plus one gathered layer. The parametrizations sit inside each
layer, so they rotate and fake-quantize the gathered weight; the rotations themselves (R1
8192 x 8192 in float32 is 256 MiB, R2 80 x 128 x 128) stay replicated outside FSDP and keep
the one all-reduce per step used here. That is :func:`shard_frozen_model`
(``optimize --fsdp``, config ``fsdp: true``). On 2 GPUs of one host::

    torchrun --nproc-per-node 2 -m rotaquant optimize --model smollm2-135m --w-bits 16 \
        --a-bits 4 --k-bits 4 --v-bits 4 --a-asym --k-asym --v-asym --o-proj-input per_head \
        --iterations 100 --fsdp --output learned_fsdp.safetensors --json learn_fsdp.json

(and the same without ``--fsdp`` for the data-parallel baseline; ``--nproc-per-node 1`` for
one GPU). The frozen parameters have no gradients, so FSDP only all-gathers them (forward,
checkpointed recomputation, backward) and never reduce-scatters.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Rank, world size and this rank's device; ``world == 1`` when not distributed."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> torch.device:
        """``cuda:LOCAL_RANK`` under torchrun with GPUs, else the requested device."""
        if self.enabled and torch.cuda.is_available() and requested in (None, "auto", "cuda"):
            return torch.device("cuda", self.local_rank)
        if requested in (None, "auto"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(requested)

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` over the ranks, in place (one flat all_reduce)."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def mean(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item() / self.world

    def max_divergence(self, tensors: list[torch.Tensor]) -> float:
        """Largest difference between this rank's tensors and rank 0's (0 when alone)."""
        if not self.enabled:
            return 0.0
        worst = 0.0
        for t in tensors:
            ref = t.detach().clone()
            dist.broadcast(ref, src=0)
            worst = max(worst, (ref - t.detach()).abs().max().item())
        out = torch.tensor([worst], dtype=torch.float64, device=tensors[0].device)
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out.item()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.started_here and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed() -> DistContext:
    """A :class:`DistContext` from torchrun's environment (``WORLD_SIZE``, ``RANK``, ...).

    Starts the process group (NCCL with GPUs, Gloo on CPU) if torchrun launched us and it is
    not started yet; without torchrun, a single-process context.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    _rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    started = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
        started = True
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, started_here=started)


def shard_frozen_model(model: nn.Module, layers: nn.ModuleList, ctx: DistContext, device: torch.device) -> int:
    """Shard ``model``'s (frozen) parameters over the ranks of ``ctx`` with FSDP2, IN PLACE.

    Each decoder layer of ``layers`` becomes one ``fully_shard`` unit (all-gathered for its
    forward and backward, then freed), the rest of the model (embeddings, final norm, head) the
    root unit. The parametrizations that rotate the weights sit inside the layers, so they see
    the gathered weights; the trainable rotations are not part of ``model`` and stay replicated.
    Returns the number of units (0, and nothing changes, when ``ctx`` is a single process).
    """
    if not ctx.enabled:
        logger.info("fsdp: a single process, nothing to shard")
        return 0
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (ctx.world,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    logger.info("fsdp: %d decoder layers + root sharded over %d ranks", len(layers), ctx.world)
    return len(layers) + 1

"""FSDP2-sharded rotation learning: 2 Gloo processes on CPU learn the same rotations as one."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rotaquant.learn.config import OptimizeConfig
from rotaquant.learn.distributed import DistContext
from rotaquant.learn.train import learn
from rotaquant.learn.trainable import make_trainable
from rotaquant.rotation.matrices import RotationStore
from rotaquant.rotation.rotate import resolve_spec
from tests.conftest import tiny_model

# the deployed recipe: int4 weights, asymmetric activations/KV, o_proj input per head
SETTINGS = dict(w_bits=4, a_bits=4, k_bits=4, v_bits=4, a_asym=True, k_asym=True, v_asym=True,
                o_proj_input="per_head", nsamples=8, seqlen=16, iterations=3, batch_size=4, lr=1.0,
                device="cpu", checkpoint_every=100)


def _windows() -> torch.Tensor:
    return torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(0))


def _learn(ctx: DistContext | None, **kw):
    cfg = OptimizeConfig(**SETTINGS, **kw)
    model = tiny_model("llama", seed=0)
    spec = resolve_spec(model, "auto")
    tm = make_trainable(model, spec, RotationStore(spec, model.config, seed=cfg.seed, mode=cfg.init_mode), cfg)
    return tm, learn(tm, _windows(), cfg, ctx, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tm, res = _learn(DistContext(rank=rank, world=world, local_rank=rank), fsdp=True)
        # the frozen weights really are sharded: DTensors whose local part is half of each
        original = tm.layers[0].mlp.down_proj.parametrizations.weight.original
        sharded = type(original).__name__ == "DTensor" and original.to_local().numel() * world == original.numel()
        torch.save({"matrices": res.matrices, "losses": res.losses, "div": res.rank_divergence, "sharded": sharded},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fsdp_two_ranks_equal_one_rank(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same summation order (and no oversubscription)
    try:
        _, single = _learn(None)
    finally:
        torch.set_num_threads(threads)  # later tests in this process keep their numerics
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["sharded"] and r1["sharded"] and r0["div"] == 0.0
    assert r0["losses"] == pytest.approx(single.losses, rel=1e-5)
    for key, mat in single.matrices.items():
        assert torch.allclose(r0["matrices"][key], mat, atol=1e-5), key
        assert torch.equal(r0["matrices"][key], r1["matrices"][key])

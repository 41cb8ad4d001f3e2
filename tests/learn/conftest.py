"""Fixtures of the learning tests: structured token windows and a tiny llama fitted to them."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model


def phrase_windows(n=16, seqlen=32, seed=0):
    """Text with structure (repeated phrases), so there is something to predict."""
    gen = torch.Generator().manual_seed(seed)
    phrases = torch.randint(0, 96, (6, 8), generator=gen)
    rows = [torch.cat([phrases[i] for i in torch.randint(0, 6, (seqlen // 8,), generator=gen)]) for _ in range(n)]
    return torch.stack(rows)


@pytest.fixture(scope="module")
def two_threads():
    """The 3-bit quantized loss surface is rugged: the outcome of a few steps depends on float
    reduction order, and the thresholds below were measured with 2 intra-op threads (CI's), so
    pin them here (a 16-core box would otherwise sum in another order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_state(two_threads):
    """A tiny llama fitted to the phrase data, so that quantization noise costs loss.

    (A random model predicts nothing: its loss is ~log(vocab) with or without quantization.)
    """
    torch.manual_seed(0)
    model = tiny_model("llama")
    windows = phrase_windows(32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        loss = model(windows, labels=windows).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, windows[:16]

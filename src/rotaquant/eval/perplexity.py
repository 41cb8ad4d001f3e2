"""WikiText-2 style perplexity: exp(mean token NLL over non-overlapping windows)."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import PROTOCOL, TextData, cut_windows, load_text, tokenize
from ..errors import NonFiniteError
from ..io import to_json

logger = logging.getLogger(__name__)


@dataclass
class PerplexityResult:
    """The outcome of one perplexity evaluation; ``to_dict``/``to_json`` serialize it."""

    ppl: float
    nll: float
    windows: int
    tokens: int
    seqlen: int
    dtype: str
    device: str
    seconds: float
    data: str = ""
    split: str = ""
    protocol: str = PROTOCOL
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int = 2) -> str:
        return to_json(self.to_dict(), indent=indent)

    def summary(self) -> str:
        return (
            f"ppl={self.ppl:.4f} windows={self.windows} tokens={self.tokens} seqlen={self.seqlen} "
            f"dtype={self.dtype} device={self.device} seconds={self.seconds:.1f} "
            f"data={self.data}/{self.split}"
        )


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def window_nll(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL (float64) of each window of ``batch`` ``[B, L]``."""
    logits = model(input_ids=batch, use_cache=False).logits
    logits = logits[:, :-1].float()
    targets = batch[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return nll.view(batch.size(0), -1).double().sum(dim=1)


@torch.no_grad()
def first_non_finite_module(model: torch.nn.Module, batch: torch.Tensor) -> str | None:
    """Re-run ``batch`` with forward hooks; the first module (in execution order) whose output
    holds a NaN or infinity, as ``"name (Class)"``, else None. The hooks are removed afterwards."""
    found: list[str] = []

    def check(name):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple | list) else getattr(output, "logits", output)
            if not found and isinstance(out, torch.Tensor) and out.is_floating_point() and not torch.isfinite(out).all():
                found.append(f"{name} ({type(module).__name__})")
        return hook

    handles = [m.register_forward_hook(check(n)) for n, m in model.named_modules() if n]
    try:
        model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _raise_non_finite(model: torch.nn.Module, batch: torch.Tensor, first_window: int) -> None:
    where = first_non_finite_module(model, batch)
    culprit = f"the first module with a non-finite output is {where}" if where else \
        "no module output is non-finite on a re-run (the loss itself overflowed)"
    raise NonFiniteError(
        f"non-finite logits (NaN/inf) in windows {first_window}..{first_window + len(batch) - 1}: {culprit}. "
        "Check that module's weights (NaN/inf after a transform or quantization?), the quantization "
        "settings, and the dtype (fp16 overflows; try float32 or bf16)")


def perplexity(
    model: torch.nn.Module,
    tokenizer=None,
    data: str | os.PathLike | TextData | torch.Tensor = "wikitext2",
    split: str = "test",
    seqlen: int = 2048,
    batch_size: int = 1,
    max_windows: int | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` over non-overlapping windows of ``seqlen`` tokens.

    Args:
        model: a causal LM (not modified; run in eval mode under ``torch.no_grad``).
        tokenizer: needed unless ``data`` is already a 1-D tensor of token ids.
        data: a named set (``wikitext2``), a local ``.txt``/``.jsonl`` path, a ``TextData`` or a
            1-D tensor of token ids.
        split: the split of a named set (``test`` by default).
        seqlen: window length; the protocol joins rows with "\\n\\n" and tokenizes once.
        batch_size: windows per forward pass.
        max_windows: evaluate only the first N windows (quick runs).
        data_dir: where named sets live (see :mod:`rotaquant.data`).
        progress: show a tqdm bar.
    """
    started = time.perf_counter()
    if isinstance(data, torch.Tensor):
        ids, name = data.flatten(), "tokens"
    else:
        text = data if isinstance(data, TextData) else load_text(data, split, data_dir)
        if tokenizer is None:
            raise ValueError("perplexity() needs a tokenizer unless data is a tensor of token ids")
        ids, name, split = tokenize(text, tokenizer), text.name, text.split
    windows = cut_windows(ids, seqlen, max_windows)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    bar = tqdm(total=len(windows), desc=f"ppl {name}/{split}", unit="win", disable=not progress)
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size].to(device)
            nll = window_nll(model, batch)
            if not torch.isfinite(nll).all():
                _raise_non_finite(model, batch, start)
            total += nll.sum().cpu()
            bar.update(len(batch))
            bar.set_postfix(ppl=f"{math.exp(total.item() / ((start + len(batch)) * (seqlen - 1))):.3f}")
    finally:
        bar.close()
        model.train(was_training)
    tokens = len(windows) * (seqlen - 1)
    nll = total.item() / tokens
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return PerplexityResult(
        ppl=math.exp(nll),
        nll=nll,
        windows=len(windows),
        tokens=tokens,
        seqlen=seqlen,
        dtype=str(_model_dtype(model)).replace("torch.", ""),
        device=str(device),
        seconds=time.perf_counter() - started,
        data=name,
        split=split,
    )

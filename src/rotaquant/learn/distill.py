"""Learning against the full-precision model's predictions instead of the next token.

With ``loss: kl_top`` the rotations are trained to make the fake-quantized model predict what
the full-precision model predicts (the idea of OSTQuant's KL-Top loss): before the first step
the unrotated FP model runs once over the calibration windows and keeps, per position, its
``distill_top_k`` most likely tokens and their probabilities (renormalized over those k). The
loss of a step is then

    KL(q || p) = sum_i q_i (log q_i - log p_i)     over the teacher's top k tokens i,

with ``q`` the teacher's renormalized probabilities and ``p`` the quantized model's full
softmax: zero when the quantized model reproduces the teacher on its top tokens, never
negative. It uses every position of a window (cross-entropy has no target for the last one)
and a teacher distribution instead of one sampled token, a less noisy signal for a small model.

The targets live on the CPU (``nsamples x seqlen x k`` int32 indices + float16 probabilities:
about 0.6 GB for 800 x 2048 windows and k = 64) and move to the device one micro-batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class TeacherTargets:
    """The FP model's top-k next-token distribution for every window position."""

    indices: torch.Tensor  # [nsamples, seqlen, k] int32 token ids
    probs: torch.Tensor  # [nsamples, seqlen, k] float16, summing to 1 over k
    neg_entropy: torch.Tensor  # [nsamples, seqlen] float32: sum_i q_i log q_i

    def take(self, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The targets of windows ``rows`` on ``device``: (indices int64, probs float32, neg entropy)."""
        return (self.indices[rows].to(device, torch.int64), self.probs[rows].to(device, torch.float32),
                self.neg_entropy[rows].to(device))


@torch.no_grad()
def teacher_targets(model: nn.Module, windows: torch.Tensor, top_k: int, batch_size: int,
                    amp: torch.dtype | None, progress: bool = True) -> TeacherTargets:
    """Run ``model`` (the full-precision model, on its device) over ``windows`` ``[n, seqlen]``
    and keep its top-``top_k`` next-token probabilities per position (k is capped at the vocab)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n, seqlen = windows.shape
    indices = probs = None
    neg_entropy = torch.empty(n, seqlen, dtype=torch.float32)
    try:
        for start in tqdm(range(0, n, batch_size), desc="teacher predictions", unit="batch", disable=not progress):
            ids = windows[start:start + batch_size].to(device)
            with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(input_ids=ids, use_cache=False).logits
            k = min(top_k, logits.shape[-1])
            top, idx = torch.topk(logits.float(), k, dim=-1)
            del logits
            logq = torch.log_softmax(top, dim=-1)  # renormalized over the top k
            q = logq.exp()
            if indices is None:
                indices = torch.empty(n, seqlen, k, dtype=torch.int32)
                probs = torch.empty(n, seqlen, k, dtype=torch.float16)
            end = start + ids.shape[0]
            indices[start:end] = idx.to("cpu", torch.int32)
            probs[start:end] = q.to("cpu", torch.float16)
            neg_entropy[start:end] = (q * logq).sum(-1).cpu()
    finally:
        model.train(was_training)
    return TeacherTargets(indices, probs, neg_entropy)


def kl_top_loss(logits: torch.Tensor, indices: torch.Tensor, probs: torch.Tensor,
                neg_entropy: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``KL(q || p)`` on the teacher's top tokens (module docstring).

    ``logits`` ``[b, t, vocab]`` of the quantized model; ``indices``/``probs`` ``[b, t, k]`` and
    ``neg_entropy`` ``[b, t]`` from :meth:`TeacherTargets.take`.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    cross = (probs * logp.gather(-1, indices)).sum(-1)
    return (neg_entropy - cross).mean()

"""``generate``: greedy or sampled text from a model, streamed token by token with a KV cache."""

from __future__ import annotations

import logging
import sys
import time

import torch

from .errors import ConfigError

logger = logging.getLogger(__name__)


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
             stream: bool = True, seed: int = 0) -> dict:
    """Continue ``prompt`` with up to ``max_new_tokens`` tokens; returns text and timings.

    Decoding uses transformers' ``generate`` with its KV cache; a quantized export's stages
    (online rotations, KV quantizers) run inside attention as they did when it was evaluated.
    ``temperature`` 0 is greedy. With ``stream`` the text is printed as it comes (stdout).
    Returns ``{"text", "new_tokens", "prefill_tokens", "seconds", "tokens_per_second"}``.
    """
    if tokenizer is None:
        raise ConfigError("generate needs a tokenizer, and this model folder has none (export it with its tokenizer)")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    from transformers import TextStreamer

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    kwargs = {"max_new_tokens": max_new_tokens, "use_cache": True, "pad_token_id": tokenizer.eos_token_id}
    if temperature > 0:
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=temperature)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if stream:
        kwargs["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        sys.stdout.write(prompt)
        sys.stdout.flush()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    seconds = time.perf_counter() - t0
    new = out[0, ids.shape[1]:]
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "new_tokens": int(new.numel()),
            "prefill_tokens": int(ids.shape[1]), "seconds": seconds,
            "tokens_per_second": new.numel() / seconds if seconds > 0 else None}

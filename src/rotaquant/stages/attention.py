"""Plumbing that calls the query/key/value stages inside attention, via transformers' registry.

For each base implementation (``sdpa``, ``eager``, ``flex_attention``, ``flash_attention_2``,
...) rotaquant registers an attention function ``rotaquant_<base>`` with transformers'
``AttentionInterface`` and the base's own mask function under the same name with
``AttentionMaskInterface``, so the mask the model builds is exactly the one the base expects
(eager's additive causal mask, sdpa's boolean or ``is_causal`` skip, flex's block mask).
The function applies the attention module's :class:`AttentionStages` (if any) to the query,
key and value after RoPE and the KV-cache update, then calls the base implementation. The
base is part of the registered name, so it is per model and the same for every layer.
No state is kept here: the stages are children of the attention modules.
"""

from __future__ import annotations

import functools
import sys

from torch import nn

from .base import StagePipeline

PREFIX = "rotaquant_"
ATTENTION_CHILD = "rq_attention"


class AttentionStages(nn.Module):
    """The pipelines of one attention module: ``query``, ``key`` and ``value``."""

    def __init__(self):
        super().__init__()
        self.query = StagePipeline()
        self.key = StagePipeline()
        self.value = StagePipeline()

    def empty(self) -> bool:
        return not (len(self.query) or len(self.key) or len(self.value))


def _base_function(base: str, module: nn.Module):
    from transformers import AttentionInterface

    if base == "eager" or base not in AttentionInterface().valid_keys():
        # transformers keeps each model's eager attention in its modeling module
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"no eager attention function found for {type(module).__name__}")
        return fn
    return AttentionInterface()[base]


@functools.cache
def _attention_function(base: str):
    def rotaquant_attention(module, query, key, value, attention_mask, **kwargs):
        stages = module._modules.get(ATTENTION_CHILD)
        if stages is not None:
            query, key, value = stages.query(query), stages.key(key), stages.value(value)
        return _base_function(base, module)(module, query, key, value, attention_mask, **kwargs)

    rotaquant_attention.__name__ = f"rotaquant_{base}_attention"
    return rotaquant_attention


def register(base: str) -> str:
    """Register ``rotaquant_<base>`` (attention and mask functions); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = PREFIX + base
    AttentionInterface.register(name, _attention_function(base))
    mask_base = "sdpa" if base not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping else base
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[mask_base])
    return name


def base_of(model: nn.Module) -> str:
    """The model's attention implementation without rotaquant's prefix."""
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    return current[len(PREFIX):] if current.startswith(PREFIX) else current


def _set_implementation(model: nn.Module, name: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(name)
    else:  # older transformers
        model.config._attn_implementation = name


def route(model: nn.Module) -> None:
    """Route ``model``'s attention through rotaquant's function for its current base (mutates
    ``model.config``). Idempotent."""
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    name = register(base_of(model))
    if current != name:
        _set_implementation(model, name)


def unroute(model: nn.Module) -> None:
    """Give ``model`` back its base attention implementation."""
    current = getattr(model.config, "_attn_implementation", None) or ""
    if current.startswith(PREFIX):
        _set_implementation(model, base_of(model))

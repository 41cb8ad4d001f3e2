"""Transforms on queries, keys and values inside attention, through transformers' registry.

rotaquant registers one attention function, ``"rotaquant"``, with transformers'
``AttentionInterface``. For an attention module that has transforms attached (R3 on Q/K after
RoPE, the KV-cache quantizer on K/V), it applies them in the order they were attached and then
calls the model's original implementation (``sdpa``, ``eager``, ``flash_attention_2``, ...).
Modules without transforms pass straight through. No modeling file is copied or patched.

Transforms live in a weak-keyed table, not as attributes on transformers' modules.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

NAME = "rotaquant"
Op = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class AttentionOps:
    """Ordered transforms for one attention module, and the implementation to delegate to."""

    base: str = "sdpa"
    query: list[tuple[str, Op]] = field(default_factory=list)
    key: list[tuple[str, Op]] = field(default_factory=list)
    value: list[tuple[str, Op]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.query or self.key or self.value)


_OPS: weakref.WeakKeyDictionary[nn.Module, AttentionOps] = weakref.WeakKeyDictionary()


def _base_function(name: str, module: nn.Module):
    from transformers import AttentionInterface

    registry = AttentionInterface()
    if name == "eager" or name not in registry.valid_keys():
        # transformers keeps each model's eager attention in its modeling module
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"no eager attention function found for {type(module).__name__}")
        return fn
    return registry[name]


def rotaquant_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention with rotaquant's transforms applied to Q/K/V (registered as ``rotaquant``)."""
    ops = _OPS.get(module)
    base = "sdpa" if ops is None else ops.base
    if ops is not None:
        for _, op in ops.query:
            query = op(query)
        for _, op in ops.key:
            key = op(key)
        for _, op in ops.value:
            value = op(value)
    return _base_function(base, module)(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, rotaquant_attention)


def _set_implementation(model: nn.Module, name: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(name)
    else:  # older transformers
        model.config._attn_implementation = name


def attach(model: nn.Module, attention: nn.Module, tag: str,
           query: Op | None = None, key: Op | None = None, value: Op | None = None) -> None:
    """Attach transforms (named ``tag``) to ``attention`` and route ``model`` through them.

    Mutates ``model``'s attention implementation (the original one is kept and delegated to).
    Attaching the same tag again replaces it.
    """
    _register()
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    ops = _OPS.get(attention)
    if ops is None:
        ops = _OPS[attention] = AttentionOps(base="sdpa" if current == NAME else current)
    for stage, op in (("query", query), ("key", key), ("value", value)):
        lst = getattr(ops, stage)
        lst[:] = [(t, o) for t, o in lst if t != tag]
        if op is not None:
            lst.append((tag, op))
    if current != NAME:
        _set_implementation(model, NAME)


def detach(model: nn.Module, tag: str) -> int:
    """Remove the transforms named ``tag`` from every attention module of ``model``.

    When no transform is left, the model goes back to its original implementation.
    Returns how many modules had the tag.
    """
    count, base = 0, None
    for module in model.modules():
        ops = _OPS.get(module)
        if ops is None:
            continue
        base = ops.base
        for stage in ("query", "key", "value"):
            lst = getattr(ops, stage)
            before = len(lst)
            lst[:] = [(t, o) for t, o in lst if t != tag]
            count += before != len(lst)
        if ops.empty():
            del _OPS[module]
    if base is not None and not any(_OPS.get(m) for m in model.modules()):
        _set_implementation(model, base)
    return count


def ops_of(module: nn.Module) -> AttentionOps | None:
    """The transforms attached to one attention module, if any."""
    return _OPS.get(module)

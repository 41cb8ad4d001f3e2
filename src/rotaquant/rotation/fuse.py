"""Norm folding and embedding untying: the steps that make the residual stream rotatable.

An RMSNorm ``y = x / rms(x) * g`` followed by a linear ``W`` equals a weightless RMSNorm
followed by ``W diag(g)``. After folding, ``rms(x R) = rms(x)`` for orthogonal ``R``, so the
residual stream can be rotated. A norm with mean subtraction (LayerNorm) is not rotation
invariant without extra work; rotaquant refuses it with a clear error.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from .spec import NormFuseConfig, RotationConfigError

logger = logging.getLogger(__name__)


def untie_embeddings(model: nn.Module) -> bool:
    """Give ``lm_head`` its own copy of the embedding matrix if the two are tied.

    Mutates ``model`` (and sets ``config.tie_word_embeddings = False``). Returns True if the
    weights were tied.
    """
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or emb is None or head.weight is not emb.weight:
        if getattr(model.config, "tie_word_embeddings", False):
            model.config.tie_word_embeddings = False
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", lambda: None)()
    if text_config is not None and text_config is not model.config:
        text_config.tie_word_embeddings = False
    logger.info("untied lm_head from embed_tokens (they will be rotated differently)")
    return True


def _check_norm(norm: nn.Module, name: str, kind: str) -> None:
    if kind == "layernorm" or isinstance(norm, nn.LayerNorm) or getattr(norm, "bias", None) is not None:
        raise RotationConfigError(
            f"{name} ({type(norm).__name__}) subtracts the mean or has a bias; rotaquant folds only "
            "RMS-style norms (weight, no bias). Register a config without this fusion, or convert "
            "the model's LayerNorms to RMSNorm first."
        )
    if getattr(norm, "weight", None) is None:
        raise RotationConfigError(f"{name} ({type(norm).__name__}) has no weight to fold")


@torch.no_grad()
def fold_norm(norm: nn.Module, linears: list[nn.Module], name: str = "norm", float64: bool = True,
              kind: str = "rms") -> None:
    """Fold the norm's gain into the input columns of each linear; make the gain 1.

    ``kind`` is the architecture's norm kind: ``rms`` (gain ``w``; ``w`` becomes ones) or
    ``rms_offset`` (Gemma-style gain ``1 + w``; ``w`` becomes zeros). ``layernorm`` is refused.
    Mutates ``norm`` and ``linears``. Computed in float64 when ``float64`` is set.
    """
    _check_norm(norm, name, kind)
    work = torch.float64 if float64 else torch.float32
    gain = norm.weight.detach().to(work) + (1.0 if kind == "rms_offset" else 0.0)
    for linear in linears:
        w = linear.weight
        if w.shape[-1] != gain.numel():
            raise RotationConfigError(f"cannot fold {name} (size {gain.numel()}) into a weight of shape {tuple(w.shape)}")
        w.copy_((w.to(work) * gain).to(w.dtype))
    norm.weight.fill_(0.0 if kind == "rms_offset" else 1.0)


def _layers(model: nn.Module, pattern: str) -> list[tuple[str, nn.Module]]:
    regex = re.compile(pattern)
    return [(n, m) for n, m in model.named_modules() if regex.search(n)]


def norm_fusion_plan(model: nn.Module, config: NormFuseConfig, layers_pattern: str, strict: bool = True):
    """The folds ``config`` asks for, without changing anything: a list of
    ``(norm full name, norm, [(linear full name, linear), ...], config key)``.

    ``decoder_layer_fuse`` pairs are relative to each decoder layer (modules matching
    ``layers_pattern``); ``lm_head_fuse`` pairs are relative to the model. With ``strict``, a
    named module that does not exist is an error; otherwise the pair is skipped for that layer.
    """
    jobs = []
    targets = [(prefix, layer, config.decoder_layer_fuse, "decoder_layer_fuse")
               for prefix, layer in _layers(model, layers_pattern)]
    if config.decoder_layer_fuse and not targets:
        raise RotationConfigError(f"no decoder layer matches {layers_pattern!r}; cannot fold decoder norms")
    targets.append(("", model, [(n, [lin]) for n, lin in config.lm_head_fuse], "lm_head_fuse"))
    for prefix, root, pairs, key in targets:
        for norm_name, linear_names in pairs:
            names = [norm_name, *linear_names]
            missing = [n for n in names if not _has(root, n)]
            if missing:
                where = prefix or type(model).__name__
                if strict:
                    raise RotationConfigError(f"norm_fuse_config: {where} has no module {missing[0]!r}")
                logger.debug("skipping norm fusion %s in %s (missing %s)", norm_name, where, missing)
                continue
            jobs.append((_join(prefix, norm_name), root.get_submodule(norm_name),
                         [(_join(prefix, n), root.get_submodule(n)) for n in linear_names], key))
    return jobs


def fuse_norms(model: nn.Module, config: NormFuseConfig, layers_pattern: str,
               strict: bool = True, float64: bool = True, kind: str = "rms") -> int:
    """Fold every configured norm into its linears; returns how many norms were folded.

    Which norms and linears: :func:`norm_fusion_plan`. Mutates ``model``.
    """
    jobs = norm_fusion_plan(model, config, layers_pattern, strict)
    for full, norm, linears, _ in jobs:
        fold_norm(norm, [lin for _, lin in linears], full, float64, kind)
    return len(jobs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
        return True
    except AttributeError:
        return False

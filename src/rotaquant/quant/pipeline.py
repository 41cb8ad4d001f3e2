"""``quantize()``: weights (RTN or GPTQ), activations and KV cache, from one PTQ recipe."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import StrictModel
from ..data import calibration_windows
from ..errors import ConfigError
from ..models.architecture import ArchitectureSpec
from ..rotation.rotate import resolve_spec, rotate, rotation_record
from ..stages import has_stage
from .activations import add_activation_quantizers, layer_linears
from .gptq import GPTQConfig
from .kv import add_kv_quantizers
from .layerwise import quantize_weights_layerwise
from .recipe import SECTIONS, PTQRecipe

logger = logging.getLogger(__name__)


@dataclass
class QuantState:
    """What :func:`quantize` did: weight statistics and how many quantizer stages it added."""

    recipe: PTQRecipe
    weight_stats: dict = field(default_factory=dict)
    act_quantizers: int = 0
    kv_modules: int = 0
    rotated_here: bool = False
    smoothing: dict | None = None


def load_recipe(recipe: PTQRecipe | StrictModel | dict | str | os.PathLike | None = None, **overrides) -> PTQRecipe:
    """A validated :class:`PTQRecipe` from a recipe, one section's config (e.g. a
    :class:`~rotaquant.quant.recipe.QuantConfig`), a dict (flat or nested), a YAML path or keywords."""
    if isinstance(recipe, PTQRecipe) and not overrides:
        return recipe
    if isinstance(recipe, PTQRecipe):
        recipe = recipe.to_dict()
    elif isinstance(recipe, StrictModel):
        names = [name for name, cls in SECTIONS.items() if type(recipe) is cls]
        if not names:
            raise ConfigError(f"quantize() takes a PTQRecipe or one of its sections ({', '.join(SECTIONS)}), "
                              f"not a {type(recipe).__name__}")
        recipe = {names[0]: recipe}
    return PTQRecipe.load(recipe, **overrides)


def check_group_sizes(model: nn.Module, rec, arch: ArchitectureSpec) -> None:
    """Every group size must divide the dimension it splits; checked before any change."""
    from ..rotation.matrices import config_dim

    for name, lin in layer_linears(model, arch, rec.skip_modules):
        for what, bits, group in (("w_groupsize", rec.w_bits, rec.w_groupsize), ("a_groupsize", rec.a_bits, rec.a_groupsize)):
            if bits < 16 and group is not None and lin.in_features % group:
                raise ConfigError(f"{what} {group} does not divide the input size {lin.in_features} of {name}")
    head_dim = config_dim(model.config, arch.head_dim)
    for what, bits, group in (("k_groupsize", rec.k_bits, rec.k_groupsize), ("v_groupsize", rec.v_bits, rec.v_groupsize)):
        if bits < 16 and group is not None and head_dim % group:
            raise ConfigError(f"{what} {group} does not divide head_dim {head_dim}")


def rotate_for_recipe(model: nn.Module, rec: PTQRecipe, progress: bool = True, verify: bool = True):
    """Rotate ``model`` IN PLACE as the recipe's rotation keys say; returns the RotationState.

    ``verify`` compares a few tokens' logits before and after (see :func:`rotaquant.rotate`):
    on by default here, so ``ptq`` and ``quantize`` never go on with a changed model."""
    return rotate(model, rec.section("rotation"), head_mixing=rec.o_proj_input == "mixed", progress=progress,
                  verify=verify)


def quantize(
    model: nn.Module,
    recipe: PTQRecipe | dict | str | os.PathLike | None = None,
    tokenizer=None,
    calibration: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    **overrides,
) -> QuantState:
    """Fake-quantize ``model`` IN PLACE as ``recipe`` says; returns a :class:`QuantState`.

    If the recipe says ``rotate`` and the model is not rotated yet, it is rotated first
    (:func:`rotaquant.rotate` with the recipe's rotation keys); with ``smoothquant_alpha`` (and
    no rotation) SmoothQuant's scales are folded in first. Then: weights (RTN or GPTQ in
    the architecture's sequential groups; GPTQ Hessians see the rotated inputs, online R4
    included, and no activation quantization), then per-token activation quantizer stages at
    every decoder-layer linear's input (except ``skip_modules``; per head at ``o_proj`` when
    ``o_proj_input`` is ``per_head``), then K/V quantizer stages inside attention. Stages run
    after the rotations at their sites whatever the order they were added in.

    So ``quantize(model, w_bits=4, rotate=True)`` rotates (the recipe's default) and then
    quantizes; ``rotate=False`` quantizes the model as it is.

    Args:
        model: a transformers causal LM (mutated).
        recipe: a PTQRecipe, one section's config (:class:`~rotaquant.quant.recipe.QuantConfig`,
            :class:`~rotaquant.config.RotationConfig`, ...), a dict (flat or nested), a YAML
            path, or None (then ``overrides``, flat recipe keys, build it).
        tokenizer: needed for GPTQ unless ``calibration`` windows are given.
        calibration: token ids ``[nsamples, seqlen]`` for GPTQ (default: random windows of the
            recipe's calibration split, seeded).
        device: where GPTQ processes each layer (default: where the model is).
    """
    rec = load_recipe(recipe, **overrides)
    # validate every quantizer spec before touching the model: nothing half-done on bad input
    wspec, aspec, kspec, vspec = rec.weight_spec, rec.act_spec, rec.key_spec, rec.value_spec
    arch = resolve_spec(model, rec.rotation_config).architecture
    check_group_sizes(model, rec, arch)
    state = QuantState(rec)
    if rec.rotate and rotation_record(model) is None:
        logger.info("the recipe says rotate and the model is not rotated: rotating it first")
        rotate_for_recipe(model, rec, progress)
        state.rotated_here = True
    if rec.o_proj_input == "mixed" and not has_stage(model, "rh"):
        raise ConfigError("o_proj_input 'mixed' needs the heads mixed online: rotate(model, ..., head_mixing=True) "
                          "first, or use o_proj_input 'per_head' / 'per_token'")
    windows = calibration
    needs_data = rec.smoothquant_alpha is not None or (wspec.enabled and rec.w_method == "gptq")
    if needs_data and windows is None:
        if tokenizer is None:
            raise ConfigError("GPTQ and SmoothQuant need calibration data: pass tokenizer= (or calibration= windows)")
        windows = calibration_windows(tokenizer, rec.nsamples, rec.cal_seqlen, rec.cal_data, rec.cal_split,
                                      rec.seed, rec.data_dir, allow_test=rec.allow_test_calibration)
    if rec.smoothquant_alpha is not None:
        from .smoothquant import smooth

        if rotation_record(model) is not None:
            raise ConfigError("SmoothQuant on a rotated model: its scales would be folded back by the rotation's "
                              "norm folding; use smoothquant_alpha with rotate: false")
        state.smoothing = smooth(model, windows, alpha=rec.smoothquant_alpha, config=rec.rotation_config)
    if wspec.enabled:
        gcfg = GPTQConfig(damp=rec.gptq_damp, block_size=rec.gptq_block_size,
                          act_order=rec.gptq_act_order, static_groups=rec.gptq_static_groups, v2=rec.gptq_v2)
        state.weight_stats = quantize_weights_layerwise(
            model, wspec, windows, arch, rec.w_method, gcfg, rec.w_clip, rec.skip_modules, device, progress)
    state.act_quantizers = add_activation_quantizers(model, aspec, arch, rec.skip_modules,
                                                     per_head=rec.o_proj_input == "per_head")
    state.kv_modules = add_kv_quantizers(model, kspec, vspec, arch)
    return state

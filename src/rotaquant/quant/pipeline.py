"""``quantize()``: weights (RTN or GPTQ), activations and KV cache, from one PTQ recipe."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import calibration_windows
from .activations import add_activation_quantizers
from .gptq import GPTQConfig
from .kv import add_kv_quantizers
from .layerwise import quantize_weights_layerwise
from .recipe import PTQRecipe

logger = logging.getLogger(__name__)


@dataclass
class QuantState:
    """What :func:`quantize` did: weight statistics and the activation hooks it added."""

    recipe: PTQRecipe
    weight_stats: dict = field(default_factory=dict)
    act_handles: list = field(default_factory=list)
    kv_modules: int = 0


def load_recipe(recipe: PTQRecipe | dict | str | os.PathLike | None = None, **overrides) -> PTQRecipe:
    """A validated :class:`PTQRecipe` from a recipe, a dict, a YAML path or keyword arguments."""
    if isinstance(recipe, PTQRecipe) and not overrides:
        return recipe
    if isinstance(recipe, PTQRecipe):
        recipe = recipe.to_dict()
    return PTQRecipe.load(recipe, **overrides)


def check_group_sizes(model: nn.Module, rec: PTQRecipe) -> None:
    """Every group size must divide the dimension it splits; checked before any change."""
    from ..errors import ConfigError
    from ..rotation.matrices import config_dim
    from .activations import linear_modules

    for name, lin in linear_modules(model, rec.skip_modules):
        for what, bits, group in (("w_groupsize", rec.w_bits, rec.w_groupsize), ("a_groupsize", rec.a_bits, rec.a_groupsize)):
            if bits < 16 and group is not None and lin.in_features % group:
                raise ConfigError(f"{what} {group} does not divide the input size {lin.in_features} of {name}")
    head_dim = config_dim(model.config, "head_dim")
    for what, bits, group in (("k_groupsize", rec.k_bits, rec.k_groupsize), ("v_groupsize", rec.v_bits, rec.v_groupsize)):
        if bits < 16 and group is not None and head_dim % group:
            raise ConfigError(f"{what} {group} does not divide head_dim {head_dim}")


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

    Order: weights first (GPTQ Hessians see the rotated inputs, including the online R4, and no
    activation quantization), then per-token activation quantizers on every linear's input
    (except ``skip_modules``), then the K/V quantizers inside attention (after R3).
    Rotate the model with :func:`rotaquant.rotate` before calling this.

    Args:
        model: a transformers causal LM (mutated).
        recipe: a PTQRecipe, dict, YAML path, or None (then ``overrides`` build it).
        tokenizer: needed for GPTQ unless ``calibration`` windows are given.
        calibration: token ids ``[nsamples, seqlen]`` for GPTQ (default: random windows of the
            recipe's calibration split, seeded).
        device: where GPTQ processes each layer (default: where the model is).
    """
    rec = load_recipe(recipe, **overrides)
    # validate every quantizer spec before touching the model: nothing half-done on bad input
    wspec, aspec, kspec, vspec = rec.weight_spec, rec.act_spec, rec.key_spec, rec.value_spec
    check_group_sizes(model, rec)
    state = QuantState(rec)
    if wspec.enabled:
        windows = None
        if rec.w_method == "gptq":
            windows = calibration if calibration is not None else calibration_windows(
                tokenizer, rec.nsamples, rec.cal_seqlen, rec.cal_data, rec.cal_split, rec.seed, rec.data_dir)
        gcfg = GPTQConfig(damp=rec.gptq_damp, block_size=rec.gptq_block_size,
                          act_order=rec.gptq_act_order, static_groups=rec.gptq_static_groups)
        state.weight_stats = quantize_weights_layerwise(
            model, wspec, windows, rec.w_method, gcfg, rec.w_clip, rec.skip_modules, device, progress)
    state.act_handles = add_activation_quantizers(model, aspec, rec.skip_modules)
    state.kv_modules = add_kv_quantizers(model, kspec, vspec)
    return state

"""SmoothQuant: move activation outliers into the weights with per-channel scales.

For a source (a norm, or a linear) whose output feeds linears ``W_1 .. W_n``, with ``a_j`` the
maximum of ``|x_j|`` of input channel ``j`` on calibration data and ``w_j`` the maximum of
``|W_i[:, j]|`` over the rows of all ``W_i``::

    s_j = a_j ** alpha / w_j ** (1 - alpha)       (a_j, w_j and s_j clamped to >= min_scale)

then ``source /= s`` (a norm's weight and bias; a linear's output rows and bias) and
``W_i[:, j] *= s_j``. The model computes the same function (up to rounding), but the linears'
inputs have flatter channels, so per-token activation quantization loses less (Xiao et al.,
2023). The norm -> linears pairs are the rotation config's ``norm_fuse_config.decoder_layer_fuse``
(the registry's config for the model class, as :func:`rotaquant.rotate` uses), so an
architecture is described once. ``include_vo`` adds V -> O (:func:`vo_mapping`), with the scales of
a key/value head shared by the query heads that read it (grouped-query attention); it is off
by default, as in the paper, which smooths the inputs of the QKV and the first MLP linears.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from ..errors import ConfigError

logger = logging.getLogger(__name__)

# a source linear's output feeds the target linears (names relative to a decoder layer)
VO_MAPPING: tuple[str, list[str]] = ("self_attn.v_proj", ["self_attn.o_proj"])


def smooth_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.5,
                  min_scale: float = 1e-5) -> torch.Tensor:
    """``s = max|X|^alpha / max|W|^(1-alpha)`` per channel, in float64, every term >= ``min_scale``."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    a = act_absmax.double().clamp(min=min_scale)
    w = weight_absmax.double().clamp(min=min_scale)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=min_scale)


def _rotation_spec(model: nn.Module, config):
    from ..rotation.spec import load_spec

    if config not in (None, "auto"):
        return load_spec(config)
    from ..rotation.registry import lookup

    spec = getattr(lookup(model), "config", None)
    if spec is None:
        raise ConfigError(f"{type(model).__name__} is registered without a rotation config; pass "
                          "config=<a built-in config name or a YAML path> to smooth()")
    return spec


def vo_mapping(spec) -> tuple[str, list[str]]:
    """V -> O relative to a decoder layer: from the config's ``architecture`` section when it
    has one, else :data:`VO_MAPPING`."""
    arch = getattr(spec, "architecture", None)
    if arch is None:
        return VO_MAPPING
    return f"{arch.attention}.{arch.v_proj}", [f"{arch.attention}.{arch.o_proj}"]


def smoothing_groups(model: nn.Module, config="auto", extra: list[tuple[str, list[str]]] | None = None,
                     include_vo: bool = False) -> list[tuple[str, nn.Module, list[tuple[str, nn.Linear]]]]:
    """``(source_name, source, [(linear_name, linear), ...])`` for every decoder layer.

    The pairs are the rotation config's ``norm_fuse_config.decoder_layer_fuse``; ``config`` is
    ``"auto"`` (the registry's config for the model class), a built-in rotation config name, a
    YAML path, a dict or a RotationSpec. ``extra``: more ``(source, [targets])`` pairs relative
    to each decoder layer; ``include_vo`` adds V -> O (:func:`vo_mapping`).
    """
    spec = _rotation_spec(model, config)
    if spec.norm_fuse_config is None or not spec.norm_fuse_config.decoder_layer_fuse:
        raise ConfigError("the rotation config has no norm_fuse_config.decoder_layer_fuse: "
                          "SmoothQuant has no norm -> linears pairs to smooth")
    pairs = [(n, list(lins)) for n, lins in spec.norm_fuse_config.decoder_layer_fuse]
    pairs += list(extra or []) + ([vo_mapping(spec)] if include_vo else [])
    regex = re.compile(spec.layers_pattern)
    layers = [(n, m) for n, m in model.named_modules() if regex.search(n)]
    if not layers:
        raise ConfigError(f"no decoder layer of {type(model).__name__} matches {spec.layers_pattern!r}")
    groups = []
    for prefix, layer in layers:
        for source, targets in pairs:
            try:
                src = layer.get_submodule(source)
                lins = [(f"{prefix}.{t}", layer.get_submodule(t)) for t in targets]
            except AttributeError as exc:
                raise ConfigError(f"SmoothQuant mapping {source} -> {targets}: {prefix} has no such module ({exc})") from None
            groups.append((f"{prefix}.{source}", src, lins))
    return groups


def _kv_expansion(source: nn.Linear, target: nn.Linear, config) -> tuple[int, int]:
    """``(groups, head_dim)``: how many target input channels read each source output channel."""
    if target.in_features == source.out_features:
        return 1, source.out_features
    kv_heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", 1)
    rep, rem = divmod(target.in_features, source.out_features)
    if rem or source.out_features % kv_heads:
        raise ConfigError(f"cannot smooth a linear of {source.out_features} outputs into one of "
                          f"{target.in_features} inputs")
    return rep, source.out_features // kv_heads


def _to_source(x: torch.Tensor, rep: int, head_dim: int) -> torch.Tensor:
    """Per-target-channel values -> per-source-channel maxima (query heads sharing a KV head)."""
    return x if rep == 1 else x.view(-1, rep, head_dim).amax(dim=1).reshape(-1)


def _to_target(s: torch.Tensor, rep: int, head_dim: int) -> torch.Tensor:
    return s if rep == 1 else s.view(-1, head_dim).repeat_interleave(rep, dim=0).reshape(-1)


@torch.no_grad()
def _apply(source: nn.Module, targets: list[nn.Linear], s: torch.Tensor, rep: int, head_dim: int) -> None:
    if isinstance(source, nn.Linear):
        w = source.weight
        w.copy_((w.double() / s[:, None]).to(w.dtype))
    else:
        w = source.weight
        w.copy_((w.double() / s).to(w.dtype))
    bias = getattr(source, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.copy_((bias.double() / s).to(bias.dtype))
    st = _to_target(s, rep, head_dim)
    for lin in targets:
        lin.weight.copy_((lin.weight.double() * st).to(lin.weight.dtype))


@torch.no_grad()
def smooth(
    model: nn.Module,
    calibration_windows: torch.Tensor,
    alpha: float = 0.5,
    config="auto",
    include_vo: bool = False,
    extra_mappings: list[tuple[str, list[str]]] | None = None,
    min_scale: float = 1e-5,
    batch_size: int = 1,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Apply SmoothQuant to ``model`` IN PLACE (norm weights and linear weights change).

    Run it on the full-precision model, before :func:`rotaquant.quantize`; the model computes
    the same function afterwards (exactly in float64, up to rounding in lower precision).

    Args:
        model: a transformers causal LM (mutated).
        calibration_windows: token ids ``[nsamples, seqlen]`` for the activation maxima, e.g.
            from :func:`rotaquant.data.calibration_windows`.
        alpha: migration strength in [0, 1] (0.5 in the paper; higher moves more into weights).
        config: where the norm -> linears pairs come from (see :func:`smoothing_groups`).
        include_vo: also smooth V -> O (:func:`vo_mapping`).
        extra_mappings: more ``(source, [targets])`` pairs relative to each decoder layer.
        min_scale: lower clamp of the maxima and of the scales.
        batch_size: calibration windows per forward pass.
        progress: show a progress bar.

    Returns:
        ``{source_name: scales}`` (float64, on the CPU), one entry per smoothed source.
    """
    from ..eval.capture import capture

    groups = smoothing_groups(model, config, extra_mappings, include_vo)
    smooth_scales(torch.ones(1), torch.ones(1), alpha)  # validate alpha before any forward
    probes = sorted({lins[0][0] for _, _, lins in groups})
    stats = capture(model, probes, calibration_windows, what=("input",), stats=("absmax",),
                    batch_size=batch_size, progress=progress)
    scales: dict[str, torch.Tensor] = {}
    for name, source, lins in groups:
        act = stats[lins[0][0]]["input"].absmax
        if act is None:
            raise ConfigError(f"{lins[0][0]} saw no input during calibration; cannot smooth {name}")
        wmax = torch.stack([lin.weight.detach().abs().amax(dim=0).to("cpu", torch.float64) for _, lin in lins]).amax(dim=0)
        rep, head_dim = (1, act.numel())
        if isinstance(source, nn.Linear):
            rep, head_dim = _kv_expansion(source, lins[0][1], model.config)
        s = smooth_scales(_to_source(act, rep, head_dim), _to_source(wmax, rep, head_dim), alpha, min_scale)
        _apply(source, [lin for _, lin in lins], s.to(source.weight.device), rep, head_dim)
        scales[name] = s
    logger.info("SmoothQuant (alpha %.2f) on %d sources", alpha, len(scales))
    return scales

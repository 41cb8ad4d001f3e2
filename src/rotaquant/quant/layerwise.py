"""Layer-by-layer weight quantization (GPTQ or RTN) with one decoder layer on the GPU at a time.

The calibration windows run through the embeddings once; the inputs of decoder layer 0 are
captured, then each layer in turn is moved to the device, its linears' Hessians are collected
on exactly the inputs they see (after R1 fused into the weights and after online R4 hooks),
its weights are quantized, and the layer is run again with the quantized weights to produce the
next layer's inputs. Only one layer's weights and the calibration activations live on the
device, so models larger than the GPU can be quantized.
"""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.architecture import ArchitectureSpec, decoder_layers
from ..rotation.spec import pattern_matches
from .gptq import GPTQConfig, HessianAccumulator, gptq_quantize_weight
from .gptq_v2 import CrossAccumulator, gptaq_target
from .quantizer import QuantSpec
from .rtn import rtn_quantize_weight
from .weights import attach_quantized_weight

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the capture hook once layer 0's inputs are recorded."""


def _move_outside_layers(model: nn.Module, layers_name: str, device: torch.device) -> None:
    for name, module in model.named_modules():
        if name == layers_name or name.startswith(layers_name + "."):
            continue
        for _key, p in list(module.named_parameters(recurse=False)):
            p.data = p.data.to(device)
        for key, b in list(module.named_buffers(recurse=False)):
            module._buffers[key] = b.to(device)


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor,
                         device: torch.device) -> tuple[list[torch.Tensor], dict]:
    """Hidden states entering layer 0 for each window, and the layer's other keyword inputs."""
    inputs: list[torch.Tensor] = []
    shared: dict = {}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.append(hidden)
        if not shared:
            shared.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for row in windows:
            try:
                model(input_ids=row[None].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    shared["use_cache"] = False
    return inputs, shared


def selected_linears(layer: nn.Module, prefix: str, skip: list[str]) -> dict[str, nn.Linear]:
    """``{name relative to the layer: linear}`` for the layer's linears whose full name
    (``prefix.name``) matches none of the ``skip`` globs."""
    return {n: m for n, m in layer.named_modules()
            if isinstance(m, nn.Linear) and not any(pattern_matches(p, f"{prefix}.{n}") for p in skip)}


def sequential_groups(linears: dict[str, nn.Linear], arch: ArchitectureSpec, where: str) -> list[list[str]]:
    """The layer's linears in the spec's GPTQ groups; linears no group names form a last group."""
    groups, seen = [], set()
    for group in arch.gptq_groups:
        names = [n for n in group if n in linears and n not in seen]
        seen.update(names)
        if names:
            groups.append(names)
    rest = [n for n in linears if n not in seen]
    if rest:
        logger.info("%s: %s are in no GPTQ group of the architecture spec; quantized last, together", where, rest)
        groups.append(rest)
    return groups


def batch_windows(inputs: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Per-window hidden states ``[1, L, H]`` concatenated into batches of ``size`` windows (the
    shared keyword inputs, RoPE tables and masks of batch 1, broadcast over the batch)."""
    if size < 1:
        raise ValueError(f"calibration_batch must be >= 1, got {size}")
    return [torch.cat(inputs[i:i + size]) for i in range(0, len(inputs), size)]


def _run_layer(layer: nn.Module, inputs: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    outs = []
    for hidden in inputs:
        out = layer(hidden, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


@torch.no_grad()
def quantize_weights_layerwise(
    model: nn.Module,
    spec: QuantSpec,
    windows: torch.Tensor | None,
    arch: ArchitectureSpec,
    method: str = "gptq",
    gptq: GPTQConfig | None = None,
    clip_search: bool = False,
    skip: list[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    calibration_batch: int = 8,
) -> dict:
    """Quantize every selected linear of every decoder layer IN PLACE; returns statistics.

    ``method`` is ``gptq`` (needs calibration ``windows`` [N, L] of token ids) or ``rtn``.
    GPTQ follows the architecture's sequential groups (``[[k, v, q], [o], [up, gate], [down]]``
    for Llama): each group's Hessians are collected on the layer's inputs after the earlier
    groups of the same layer are quantized, as in the GPTQ/QuaRot reference code. Each
    quantized linear keeps its integer codes, scales and zero points (``rq_weight``).
    Linears outside the decoder layers (``lm_head``) are not touched. ``device`` is where each
    layer is processed (default: the device of the layers). The layer runs on
    ``calibration_batch`` windows at a time (one forward pass each, fewer kernel launches; the
    Hessians are the same sums in another order).
    """
    skip = skip or []
    layers_name, layers = decoder_layers(model, arch)
    home = next(layers[0].parameters()).device
    device = torch.device(device) if device is not None else home
    started = time.perf_counter()
    stats = {"method": method, "layers": len(layers), "linears": 0, "objective": {}}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if method == "rtn":
        for i, layer in enumerate(tqdm(layers, desc="RTN", unit="layer", disable=not progress)):
            for lin in selected_linears(layer, f"{layers_name}.{i}", skip).values():
                wq, scale, zero = rtn_quantize_weight(lin.weight, spec, clip_search=clip_search, return_params=True)
                lin.weight.copy_(wq)
                attach_quantized_weight(lin, spec, scale, zero, "rtn")
                stats["linears"] += 1
        stats["seconds"] = time.perf_counter() - started
        return stats
    if windows is None:
        raise ValueError("GPTQ needs calibration windows")
    gptq = gptq or GPTQConfig()
    _move_outside_layers(model, layers_name, device)
    inputs, kwargs = capture_layer_inputs(model, layers, windows, device)
    inputs = batch_windows(inputs, calibration_batch)
    fp_inputs = list(inputs) if gptq.v2 else None  # GPTAQ: what the FP model feeds each layer
    for i, layer in enumerate(tqdm(layers, desc="GPTQv2" if gptq.v2 else "GPTQ", unit="layer", disable=not progress)):
        prefix = f"{layers_name}.{i}"
        layer.to(device)
        fp_layer = copy.deepcopy(layer) if gptq.v2 else None
        linears = selected_linears(layer, prefix, skip)
        for group in sequential_groups(linears, arch, prefix):
            accs = {n: HessianAccumulator(linears[n].in_features, device=device, name=f"{prefix}.{n}") for n in group}
            if fp_layer is None:
                _collect_hessians(layer, linears, group, accs, inputs, kwargs)
                crosses = {}
            else:
                crosses = {n: CrossAccumulator(linears[n].in_features, device=device, name=f"{prefix}.{n}")
                           for n in group}
                _collect_paired(layer, fp_layer, linears, group, accs, crosses, inputs, fp_inputs, kwargs)
            for n in group:
                lin = linears[n]
                hess = accs[n].hessian
                target = lin.weight if n not in crosses else gptaq_target(lin.weight, hess, crosses[n].cross, gptq.damp)
                wq, scale, zero = gptq_quantize_weight(target, hess, spec, gptq, clip_search=clip_search,
                                                       return_params=True, name=f"{prefix}.{n}")
                lin.weight.copy_(wq)
                attach_quantized_weight(lin, spec, scale, zero, "gptqv2" if n in crosses else "gptq")
                stats["linears"] += 1
            del accs, crosses
        inputs = _run_layer(layer, inputs, kwargs)
        if fp_layer is not None:
            fp_inputs = _run_layer(fp_layer, fp_inputs, kwargs)
            del fp_layer
        layer.to(home)
    _move_outside_layers(model, layers_name, home)
    stats["seconds"] = time.perf_counter() - started
    if device.type == "cuda":
        stats["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    return stats


def _collect_hessians(layer, linears, group, accs, inputs, kwargs) -> None:
    handles = [linears[n].register_forward_hook(_collect(accs[n])) for n in group]
    try:
        _run_layer(layer, inputs, kwargs)
    finally:
        for h in handles:
            h.remove()


def _collect_paired(layer, fp_layer, linears, group, accs, crosses, inputs, fp_inputs, kwargs) -> None:
    """Hessians of the quantized layer's inputs and the GPTAQ cross terms, window by window."""
    fp_linears = dict(fp_layer.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def remember(name):
        def hook(module, args, output):
            seen[name] = args[0].detach()
        return hook

    def pair(name):
        def hook(module, args, output):
            accs[name].add(args[0])
            crosses[name].add(seen.pop(name), args[0])
        return hook

    handles = [fp_linears[n].register_forward_hook(remember(n)) for n in group]
    handles += [linears[n].register_forward_hook(pair(n)) for n in group]
    try:
        for x, x_fp in zip(inputs, fp_inputs, strict=True):
            fp_layer(x_fp, **kwargs)
            layer(x, **kwargs)
    finally:
        for h in handles:
            h.remove()


def _collect(acc: HessianAccumulator):
    def hook(module, args, output):
        acc.add(args[0])

    return hook

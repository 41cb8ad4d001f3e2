"""Layer-by-layer weight quantization (GPTQ or RTN) with one decoder layer on the GPU at a time.

The calibration windows run through the embeddings once; the inputs of decoder layer 0 are
captured, then each layer in turn is moved to the device, its linears' Hessians are collected
on exactly the inputs they see (after R1 fused into the weights and after online R4 hooks),
its weights are quantized, and the layer is run again with the quantized weights to produce the
next layer's inputs. Only one layer's weights and the calibration activations live on the
device, so models larger than the GPU can be quantized.
"""

from __future__ import annotations

import logging
import re
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..rotation.spec import pattern_matches
from .gptq import GPTQConfig, HessianAccumulator, gptq_quantize_weight
from .quantizer import QuantSpec
from .rtn import rtn_quantize_weight

logger = logging.getLogger(__name__)
LAYERS = re.compile(r"(?:^|\.)layers$")


class _StopForward(Exception):
    """Raised by the capture hook once layer 0's inputs are recorded."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's decoder-layer list (the ModuleList named ``...layers``)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and LAYERS.search(name):
            return name, module
    raise ValueError(f"{type(model).__name__} has no ModuleList named 'layers'")


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


def _selected_linears(layer: nn.Module, prefix: str, skip: list[str]) -> dict[str, nn.Linear]:
    return {n: m for n, m in layer.named_modules()
            if isinstance(m, nn.Linear) and not any(pattern_matches(p, f"{prefix}.{n}") for p in skip)}


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
    method: str = "gptq",
    gptq: GPTQConfig | None = None,
    clip_search: bool = False,
    skip: list[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Quantize every selected linear of every decoder layer IN PLACE; returns statistics.

    ``method`` is ``gptq`` (needs calibration ``windows`` [N, L] of token ids) or ``rtn``.
    Linears outside the decoder layers (``lm_head``) are not touched. ``device`` is where each
    layer is processed (default: the device of the embeddings).
    """
    skip = skip or []
    layers_name, layers = decoder_layers(model)
    home = next(layers[0].parameters()).device
    device = torch.device(device) if device is not None else home
    started = time.perf_counter()
    stats = {"method": method, "layers": len(layers), "linears": 0, "objective": {}}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if method == "rtn":
        for i, layer in enumerate(tqdm(layers, desc="RTN", unit="layer", disable=not progress)):
            for lin in _selected_linears(layer, f"{layers_name}.{i}", skip).values():
                lin.weight.copy_(rtn_quantize_weight(lin.weight, spec, clip_search=clip_search))
                stats["linears"] += 1
        stats["seconds"] = time.perf_counter() - started
        return stats
    if windows is None:
        raise ValueError("GPTQ needs calibration windows")
    gptq = gptq or GPTQConfig()
    _move_outside_layers(model, layers_name, device)
    inputs, kwargs = capture_layer_inputs(model, layers, windows, device)
    for i, layer in enumerate(tqdm(layers, desc="GPTQ", unit="layer", disable=not progress)):
        prefix = f"{layers_name}.{i}"
        layer.to(device)
        linears = _selected_linears(layer, prefix, skip)
        accs = {n: HessianAccumulator(m.in_features, device=device, name=f"{prefix}.{n}") for n, m in linears.items()}
        handles = [m.register_forward_hook(_collect(accs[n])) for n, m in linears.items()]
        try:
            _run_layer(layer, inputs, kwargs)
        finally:
            for h in handles:
                h.remove()
        for n, lin in linears.items():
            hess = accs[n].hessian
            wq = gptq_quantize_weight(lin.weight, hess, spec, gptq, clip_search=clip_search)
            lin.weight.copy_(wq)
            stats["linears"] += 1
        del accs
        inputs = _run_layer(layer, inputs, kwargs)
        layer.to(home)
    _move_outside_layers(model, layers_name, home)
    stats["seconds"] = time.perf_counter() - started
    if device.type == "cuda":
        stats["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    return stats


def _collect(acc: HessianAccumulator):
    def hook(module, args, output):
        acc.add(args[0])

    return hook

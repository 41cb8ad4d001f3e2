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
from .gptq import GPTQConfig, GPTQError, HessianAccumulator, gptq_quantize_weight
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
            shared = _collect_group(layer, fp_layer, linears, group, inputs, fp_inputs, kwargs, device, prefix)
            for names, acc, cross in shared:
                _quantize_shared(linears, names, acc, cross, spec, gptq, clip_search, prefix)
                stats["linears"] += len(names)
            del shared
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


def _collect_group(layer, fp_layer, linears, group, inputs, fp_inputs, kwargs, device, prefix) -> list:
    """Hessians (and, with ``fp_layer``, GPTAQ cross terms) of a sequential group's linears.

    Linears called on the very same input tensor (q/k/v, up/gate) share one Hessian and one cross
    term: they are accumulated once, with one NaN/Inf check per group instead of a host sync per
    batch. Returns ``[(names, HessianAccumulator, CrossAccumulator or None)]``, one entry per
    distinct input, in the group's order.
    """
    owner: dict[str, str] = {}  # linear -> the first linear called on the same input tensor
    accs, crosses, fp_seen = {}, {}, {}
    batch: list[tuple[torch.Tensor, str]] = []

    def remember(name):
        def hook(module, args, output):
            fp_seen[name] = args[0].detach()
        return hook

    def accumulate(name):
        def hook(module, args, output):
            x = args[0]
            own = next((o for t, o in batch if t is x), None)
            if own is None:
                batch.append((x, name))
                own = name
            if owner.setdefault(name, own) != own:
                raise GPTQError(f"{prefix}.{name}: its input is shared with other linears differently from one "
                                "calibration batch to the next")
            if own != name:
                return
            if name not in accs:
                accs[name] = HessianAccumulator(x.shape[-1], device=device, name=f"{prefix}.{name}", check_each=False)
                if fp_layer is not None:
                    crosses[name] = CrossAccumulator(x.shape[-1], device=device, name=f"{prefix}.{name}",
                                                     check_each=False)
            accs[name].add(x)
            if fp_layer is not None:
                crosses[name].add(fp_seen[name], x)
        return hook

    handles = [linears[n].register_forward_hook(accumulate(n)) for n in group]
    if fp_layer is not None:
        fp_linears = dict(fp_layer.named_modules())
        handles += [fp_linears[n].register_forward_hook(remember(n)) for n in group]
    try:
        for k, x in enumerate(inputs):
            batch.clear()
            fp_seen.clear()
            if fp_layer is not None:
                fp_layer(fp_inputs[k], **kwargs)
            layer(x, **kwargs)
    finally:
        batch.clear()
        fp_seen.clear()
        for h in handles:
            h.remove()
    for n in group:
        if n not in owner:
            raise GPTQError(f"no calibration activations were added of {prefix}.{n}; "
                            "the layer was never called (use RTN for it)")
    return [([n for n in group if owner[n] == o], accs[o], crosses.get(o)) for o in group if o in accs]


def _quantize_shared(linears, names, acc, cross, spec, gptq, clip_search, prefix) -> None:
    """GPTQ once on the row-stacked weights of ``names`` (rows are independent in GPTQ, and the
    linears share the Hessian; with GPTQv2 each row keeps its own target); writes the quantized
    weights and ``rq_weight`` records back. Mutates the linears."""
    hess = acc.hessian
    weights = [linears[n].weight for n in names]
    w = weights[0] if len(weights) == 1 else torch.cat(weights)
    if cross is not None:
        w = gptaq_target(w, hess, cross.cross, gptq.damp)
    wq, scale, zero = gptq_quantize_weight(w, hess, spec, gptq, clip_search=clip_search, return_params=True,
                                           name=f"{prefix}.{'+'.join(names)}")
    start = 0
    for n, weight in zip(names, weights, strict=True):
        rows = slice(start, start + weight.shape[0])
        start = rows.stop
        weight.copy_(wq[rows])
        attach_quantized_weight(linears[n], spec, scale[rows], zero[rows], "gptq" if cross is None else "gptqv2")

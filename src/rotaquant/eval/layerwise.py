"""Layer-wise error analysis: where a quantized model departs from its full-precision version.

:func:`compare_layers` runs a reference and a candidate decoder layer by decoder layer on the
same token windows and compares, per layer, the outputs of every linear, of each parameterised
child of the layer except the norms (``self_attn``, ``mlp``) and of the layer itself, in two
modes:

* ``isolated``: the candidate layer gets the reference's input to that layer (its own error);
* ``accumulated``: it gets the candidate's own input (the error of all the layers so far).

Metrics: ``cosine`` is the cosine similarity of each token's output vectors, averaged over the
tokens; ``mse`` the mean squared difference of the elements.

Which basis. The reference of a processed model is the same processing without quantization
(rotated or smoothed in full precision): it computes the original model's function, and each
compared output equals the original model's exactly (``q_proj``, ``k_proj``, ``gate_proj``,
``up_proj``: R3 acts after RoPE inside attention, R4 inside ``down_proj``), or up to the
orthogonal R1 (``o_proj``, ``down_proj``, attention, MLP and layer outputs write the rotated
residual stream) or the per-head R2 (``v_proj``). Cosine and MSE do not change when both vectors
are multiplied by the same orthogonal matrix, so comparing the quantized candidate with its
processed reference in the rotated basis gives the same numbers as un-rotating both and comparing
with the original model, and no rotation matrix is needed. Norm outputs are not compared: norm
folding and SmoothQuant change them by a diagonal (non-orthogonal) factor. SmoothQuant leaves
every compared output in the original basis (unless V -> O smoothing rescales ``v_proj``'s
output, which the analysis does not use). :func:`compare_logits` checks that a processed
reference computes the original function (logits, which are basis-free).

Weights (:func:`compare_weights`): each linear's quantized weight against the reference's, i.e.
in the basis the quantizer sees (after rotation, norm folding or smoothing). The Frobenius
cosine and the MSE are invariant under the orthogonal R1/R2/R4, so for a rotated model this
equals the comparison in the original, norm-folded basis.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

MODES = ("isolated", "accumulated")
DEFAULT_LAYERS = r"(?:^|\.)layers\.\d+$"
LAYER = "layer"  # the module name of a decoder layer's own output
LOGITS = "logits"


@dataclass(frozen=True)
class Row:
    """One measurement: ``metric`` of ``module`` in decoder ``layer`` of ``method`` in ``mode``."""

    method: str
    layer: int
    module: str
    mode: str
    metric: str
    value: float

    def to_dict(self) -> dict:
        return asdict(self)


class _Agreement:
    """Running sums for the token-averaged cosine and the element MSE of output pairs."""

    def __init__(self):
        self.cos_sum, self.tokens, self.sq_sum, self.elements = 0.0, 0, 0.0, 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a = a.detach().reshape(-1, a.shape[-1]).double()
        b = b.detach().reshape(-1, b.shape[-1]).double().to(a.device)
        na, nb = a.norm(dim=-1), b.norm(dim=-1)
        cos = (a * b).sum(-1) / (na * nb).clamp_min(1e-300)
        cos = torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)
        self.cos_sum += cos.sum().item()
        self.tokens += cos.numel()
        self.sq_sum += (a - b).pow(2).sum().item()
        self.elements += a.numel()

    def values(self) -> dict[str, float]:
        return {"cosine": self.cos_sum / self.tokens, "mse": self.sq_sum / self.elements}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity along the last dimension, averaged over all the other positions."""
    acc = _Agreement()
    acc.add(a, b)
    return acc.values()["cosine"]


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference of the elements (float64)."""
    return (a.double() - b.double().to(a.device)).pow(2).mean().item()


def decoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every decoder layer (the registry config's ``layers_pattern``)."""
    pattern = DEFAULT_LAYERS
    try:
        from ..rotation.registry import lookup

        pattern = getattr(lookup(model).config, "layers_pattern", None) or DEFAULT_LAYERS
    except Exception:  # an unregistered class: the default pattern, logged
        logger.debug("no registry config for %s; decoder layers match %s", type(model).__name__, pattern)
    regex = re.compile(pattern)
    layers = [(n, m) for n, m in model.named_modules() if regex.search(n)]
    if not layers:
        raise ValueError(f"no decoder layer of {type(model).__name__} matches {pattern!r}")
    return layers


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def compared_modules(layer: nn.Module) -> list[str]:
    """Names (relative to ``layer``) compared: its linears, its parameterised non-norm children,
    and ``""`` for the layer itself."""
    names = [n for n, m in layer.named_modules() if n and isinstance(m, nn.Linear)]
    names += [n for n, m in layer.named_children()
              if not isinstance(m, nn.Linear) and not _is_norm(m) and any(True for _ in m.parameters())]
    return [*names, ""]


class _Stop(Exception):
    pass


def _layer0_inputs(model: nn.Module, layer: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, tuple, dict]:
    got: dict = {}

    def hook(module, args, kwargs):
        if args:
            got["h"], got["args"], got["kwargs"] = args[0], args[1:], dict(kwargs)
        else:
            kwargs = dict(kwargs)
            got["h"], got["args"], got["kwargs"] = kwargs.pop("hidden_states"), (), kwargs
        raise _Stop

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got["h"], got["args"], got["kwargs"]


def _first(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _run_layer(layer: nn.Module, names: list[str], h: torch.Tensor, args: tuple, kwargs: dict
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    outs: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(module, a, output):
            outs[name] = _first(output).detach()
        return hook

    handles = [layer.get_submodule(n).register_forward_hook(record(n)) for n in names if n]
    try:
        out = _first(layer(h, *args, **kwargs))
    finally:
        for handle in handles:
            handle.remove()
    outs[""] = out
    return out, outs


def _final_head(model: nn.Module):
    """``h -> logits`` after the last decoder layer (the rotation config's ``lm_head_fuse`` pair:
    final norm, then head), or None when the config does not name them."""
    try:
        from ..rotation.registry import lookup

        pairs = lookup(model).config.norm_fuse_config.lm_head_fuse
        norm, head = (model.get_submodule(n) for n in pairs[0])
    except Exception:
        return None
    return lambda h: head(norm(h))


@torch.no_grad()
def compare_layers(reference: nn.Module, candidate: nn.Module, windows: torch.Tensor, method: str,
                   modes: tuple[str, ...] = MODES, logits: bool = True, progress: bool = False) -> list[Row]:
    """Cosine and MSE of every compared module output, per decoder layer, candidate vs reference.

    The two models must compute in the same basis (see the module docstring): the reference of a
    rotated candidate is the same rotation without quantization. Neither model is mutated (hooks are removed on exit). ``windows``: token ids ``[N, L]``.
    With ``logits`` a last row per metric compares the final logits (``layer`` = the number of
    layers, ``module`` = ``logits``, mode ``accumulated``).
    """
    bad = set(modes) - set(MODES)
    if bad:
        raise ValueError(f"unknown modes {sorted(bad)}; use {list(MODES)}")
    ref_layers = [m for _, m in decoder_layers(reference)]
    cand_layers = [m for _, m in decoder_layers(candidate)]
    if len(ref_layers) != len(cand_layers):
        raise ValueError(f"the reference has {len(ref_layers)} decoder layers, the candidate {len(cand_layers)}")
    names = compared_modules(ref_layers[0])
    heads = (_final_head(reference), _final_head(candidate))
    ref_dev = next(reference.parameters()).device
    cand_dev = next(candidate.parameters()).device
    acc: dict[tuple, _Agreement] = defaultdict(_Agreement)
    for ids in tqdm(windows, desc=f"compare {method}", unit="window", disable=not progress):
        ids = ids[None]
        h_ref, r_args, r_kw = _layer0_inputs(reference, ref_layers[0], ids.to(ref_dev))
        h_cand, c_args, c_kw = _layer0_inputs(candidate, cand_layers[0], ids.to(cand_dev))
        for i, (rl, cl) in enumerate(zip(ref_layers, cand_layers, strict=True)):
            ref_next, ref_outs = _run_layer(rl, names, h_ref, r_args, r_kw)
            if "isolated" in modes:
                _, outs = _run_layer(cl, names, h_ref.to(cand_dev, h_cand.dtype), c_args, c_kw)
                for n in names:
                    acc[(i, n or LAYER, "isolated")].add(outs[n], ref_outs[n])
            if "accumulated" in modes:
                h_cand, outs = _run_layer(cl, names, h_cand, c_args, c_kw)
                for n in names:
                    acc[(i, n or LAYER, "accumulated")].add(outs[n], ref_outs[n])
            h_ref = ref_next
        if logits and "accumulated" in modes and None not in heads:
            acc[(len(ref_layers), LOGITS, "accumulated")].add(heads[1](h_cand), heads[0](h_ref))
        elif logits:  # the final norm and head are not named: whole forward passes
            acc[(len(ref_layers), LOGITS, "accumulated")].add(
                candidate(input_ids=ids.to(cand_dev), use_cache=False).logits,
                reference(input_ids=ids.to(ref_dev), use_cache=False).logits)
    return [Row(method, layer, module, mode, metric, value)
            for (layer, module, mode), a in acc.items() for metric, value in a.values().items()]


def linear_weights(model: nn.Module) -> dict[tuple[int, str], torch.Tensor]:
    """``{(layer, relative name): weight}`` of the decoder layers' linears (not copies)."""
    return {(i, n): m.weight for i, (_, layer) in enumerate(decoder_layers(model))
            for n, m in layer.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def compare_weights(reference: nn.Module, candidate: nn.Module, method: str) -> list[Row]:
    """Frobenius cosine and MSE of each decoder-layer linear's weight, candidate vs reference
    (mode ``weight``); the linears are matched by layer index and relative name."""
    ref = linear_weights(reference)
    rows = []
    for key, w in linear_weights(candidate).items():
        if key not in ref:
            continue
        a, b = w.detach().double().cpu().flatten(), ref[key].detach().double().cpu().flatten()
        cos = (a @ b / (a.norm() * b.norm()).clamp_min(1e-300)).item()
        rows += [Row(method, key[0], key[1], "weight", "cosine", cos),
                 Row(method, key[0], key[1], "weight", "mse", (a - b).pow(2).mean().item())]
    return rows


@torch.no_grad()
def compare_logits(reference: nn.Module, candidate: nn.Module, windows: torch.Tensor) -> dict[str, float]:
    """``{"cosine": ..., "mse": ...}`` of the two models' logits on ``windows`` [N, L]."""
    acc = _Agreement()
    ref_dev, cand_dev = next(reference.parameters()).device, next(candidate.parameters()).device
    for ids in windows:
        acc.add(candidate(input_ids=ids[None].to(cand_dev), use_cache=False).logits,
                reference(input_ids=ids[None].to(ref_dev), use_cache=False).logits)
    return acc.values()

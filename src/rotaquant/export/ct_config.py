"""What a rotaquant model is, in compressed-tensors' terms: quantization and transform configs.

* Weights: one ``config_group`` per distinct (weight spec, input-activation spec); int4 (any
  2..7 bits) weights are ``pack-quantized``, int8 weights ``int-quantized`` when activations are
  quantized too, else ``naive-quantized``; FP8 e4m3 weights (``type: float``) ``float-quantized``.
  Strategy ``channel`` or ``group``; symmetric or with an
  integer zero point. Scales are stored in float32 (``scale_dtype``), as rotaquant computed them.
* Activations: dynamic, one scale per token (``token``) or per group of the hidden dim; int or
  FP8 (``type: float``).
* KV cache: dynamic, one scale per token and head (``group`` of ``head_dim``) or finer groups.
* Transforms: every online Hadamard becomes a ``TransformScheme``: R4 and head mixing at a
  linear's ``input`` (their inverse fused in the weight: ``weight_input``, inverse), R3 at
  ``q_attn`` and ``k_cache``. A plain Hadamard of a power-of-two order is ``hadamard`` (any reader
  rebuilds it); one with random signs or of another order (e.g. 576 = 36*16) is
  ``random-hadamard`` whose matrix is stored per module in the checkpoint, as compressed-tensors
  names it. Modules that share a matrix share a scheme.

What the format does not carry (clip ratios of dynamic quantizers) is listed in ``notes`` and
lives in rotaquant's side file.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch
from torch import nn

from ..quant.quantizer import QuantSpec


def weight_args(spec: QuantSpec, method: str) -> dict:
    """compressed-tensors ``QuantizationArgs`` (as a dict) of a weight spec."""
    args = {"num_bits": spec.bits, "type": spec.type, "symmetric": spec.symmetric, "dynamic": False,
            "observer": "minmax", "scale_dtype": torch.float32}
    if spec.group_size is None:
        args["strategy"] = "channel"
    else:
        args.update(strategy="group", group_size=spec.group_size)
    if not spec.symmetric:
        args["zp_dtype"] = torch.int8
    return args


def dynamic_args(spec: QuantSpec) -> dict:
    """Dynamic per-token (or per-group) ``QuantizationArgs`` of an activation or KV spec."""
    args = {"num_bits": spec.bits, "type": spec.type, "symmetric": spec.symmetric, "dynamic": True, "observer": None}
    if spec.group_size is None:
        args["strategy"] = "token"
    else:
        args.update(strategy="group", group_size=spec.group_size)
    return args


# compressed-tensors computes a dynamic symmetric scale as amax / ((2^b - 1) / 2), rotaquant's
# ``sym_grid: full``; weights are exact either way (their codes and scales are stored)
_RESTRICTED_NOTE = ("the {what} quantizer is symmetric on the restricted grid (amax / (2^(b-1) - 1)); "
                    "compressed-tensors' dynamic quantizer uses amax / ((2^b - 1) / 2) (sym_grid 'full'), so "
                    "other readers quantize these tensors on a 7% finer int4 step (exact in the side file)")


def _restricted(spec: QuantSpec) -> bool:
    return spec.enabled and spec.type == "int" and spec.symmetric and spec.sym_grid == "restricted"


def weight_format(spec: QuantSpec, act: QuantSpec | None) -> str:
    """The compressed-tensors storage format of a quantized weight."""
    if spec.type == "float":
        return "float-quantized"
    if spec.bits < 8:
        return "pack-quantized"
    return "int-quantized" if act is not None and act.enabled else "naive-quantized"


def targets_for(names: list[str], all_linears: list[str]) -> list[str]:
    """Targets naming exactly ``names``: ``re:`` patterns over the layer index where a pattern
    matches no other linear, the plain names otherwise."""
    chosen, wanted = [], set(names)
    by_pattern = defaultdict(list)
    for name in names:
        parts = (r"\d+" if p.isdigit() else re.escape(p) for p in name.split("."))
        by_pattern["^" + r"\.".join(parts) + "$"].append(name)
    for pattern, members in by_pattern.items():
        regex = re.compile(pattern)
        if all(n in wanted for n in all_linears if regex.match(n)):
            chosen.append("re:" + pattern)
        else:
            chosen += members
    return chosen


def quantization_config(linears: dict[str, tuple[nn.Module, QuantSpec | None]], all_linears: list[str],
                        kv: tuple[QuantSpec | None, QuantSpec | None], head_dim: int | None):
    """``(QuantizationConfig, notes)`` for ``linears`` = ``{name: (linear with rq_weight, act spec)}``."""
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    notes = []
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, (lin, act) in linears.items():
        rec = lin.rq_weight
        key = (rec.spec.type, rec.spec.bits, rec.spec.symmetric, rec.spec.group_size, rec.method,
               None if act is None else (act.type, act.bits, act.symmetric, act.group_size, act.clip_ratio, act.sym_grid))
        groups[key].append(name)
    config_groups, formats = {}, set()
    for i, names in enumerate(sorted(groups.values(), key=lambda members: members[0])):
        lin, act = linears[names[0]]
        fmt = weight_format(lin.rq_weight.spec, act)
        formats.add(fmt)
        scheme = {"targets": targets_for(names, all_linears),
                  "weights": QuantizationArgs(**weight_args(lin.rq_weight.spec, lin.rq_weight.method)),
                  "format": fmt}
        if act is not None and act.enabled:
            scheme["input_activations"] = QuantizationArgs(**dynamic_args(act))
            if act.clip_ratio < 1:
                notes.append(f"group_{i}: activations are clipped at {act.clip_ratio:g} of their range, which "
                             "compressed-tensors cannot express (in the side file)")
            if _restricted(act):
                notes.append(f"group_{i}: {_RESTRICTED_NOTE.format(what='activation')}")
        config_groups[f"group_{i}"] = QuantizationScheme(**scheme)
    kv_scheme = None
    key_spec, value_spec = kv
    if key_spec is not None or value_spec is not None:
        specs = [s for s in (key_spec, value_spec) if s is not None]
        first = specs[0]
        if len(specs) == 2 and (key_spec.bits, key_spec.symmetric, key_spec.group_size) != (
                value_spec.bits, value_spec.symmetric, value_spec.group_size):
            notes.append(f"keys ({key_spec}) and values ({value_spec}) are quantized differently; kv_cache_scheme "
                         "holds the keys' spec (both in the side file)")
        if len(specs) == 1:
            notes.append(f"only the {'keys' if key_spec is not None else 'values'} are quantized; kv_cache_scheme "
                         "cannot say which (in the side file)")
        group = first.group_size or head_dim
        kv_scheme = QuantizationArgs(**{**dynamic_args(first), "strategy": "group", "group_size": group})
        notes.append("kv_cache_scheme is dynamic (one scale per token and head group): runtimes that accept only "
                     "static KV scales will not honour it")
        if any(s.clip_ratio < 1 for s in specs):
            notes.append("KV clip ratios are not expressible (in the side file)")
        if any(_restricted(s) for s in specs):
            notes.append(_RESTRICTED_NOTE.format(what="KV-cache"))
    ignore = [n for n in all_linears if n not in linears]
    fmt = formats.pop() if len(formats) == 1 else "mixed-precision"
    qc = QuantizationConfig(config_groups=config_groups, kv_cache_scheme=kv_scheme, format=fmt,
                            quantization_status="compressed", ignore=ignore)
    return qc, notes


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(int(math.log2(n))):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def transform_matrix(stage) -> torch.Tensor:
    """compressed-tensors' weight of an OnlineHadamard: ``M`` with ``x R = x @ M / sqrt(n)``.

    Hadamard entries are +-1, exact in bfloat16 (half the bytes of float32, and what vLLM loads
    them in); a matrix that is not +-1 stays float32."""
    m = stage.matrix(torch.float64) * math.sqrt(stage.n)
    pm1 = m.round()
    if torch.equal(pm1.abs(), torch.ones_like(pm1)) and torch.allclose(m, pm1, atol=1e-9):
        return pm1.to(torch.bfloat16)
    return m.to(torch.float32)


def transform_config(entries: list[dict], stages: dict, attention: set[str]):
    """``(TransformConfig or None, {state-dict key: matrix}, notes)`` for the rotation stages.

    ``stages`` maps ``(module, site, name)`` to the OnlineHadamard; ``attention`` names the
    attention modules (their query/key rotations become ``q_attn``/``k_cache``).
    """
    from compressed_tensors.transform import TransformArgs, TransformConfig, TransformScheme

    # modules that share a matrix (same stage name, order and signs) share a scheme
    shared: dict[tuple, dict] = {}
    for e in entries:
        if e["type"] != "hadamard":
            continue
        stage = stages[(e["module"], e["site"], e["name"])]
        m = transform_matrix(stage)
        key = (e["name"], stage.n, m.float().numpy().tobytes())
        slot = shared.setdefault(key, {"stage": stage, "matrix": m, "input": [], "attn": set()})
        if e["site"] == "input":
            slot["input"].append(e["module"])
        elif e["module"] in attention:
            slot["attn"].add((e["module"], e["site"]))
    if not shared:
        return None, {}, []
    groups, weights, notes, counts = {}, {}, [], defaultdict(int)
    for (name, n, _), slot in shared.items():
        gname = name if counts[name] == 0 else f"{name}_{counts[name]}"
        counts[name] += 1
        plain = slot["stage"].signs is None and _is_pow2(n) and torch.equal(slot["matrix"].double(), _sylvester(n))
        kind = "hadamard" if plain else "random-hadamard"
        apply, locations = [], []
        if slot["input"]:
            mods = sorted(slot["input"])
            apply += [TransformArgs(targets=mods, location="input"),
                      TransformArgs(targets=mods, location="weight_input", inverse=True)]
            locations += [(m, "input") for m in mods]
        attn = sorted({m for m, _ in slot["attn"]})
        for site, loc in (("query", "q_attn"), ("key", "k_cache")):
            mods = sorted(m for m, s in slot["attn"] if s == site)
            if mods:
                apply.append(TransformArgs(targets=mods, location=loc))
                locations += [(m, loc) for m in mods]
        if set(slot["attn"]) and {s for _, s in slot["attn"]} != {"query", "key"}:
            notes.append(f"{gname}: rotates only some of query/key on {attn[:1]}...; exact in the side file")
        groups[gname] = TransformScheme(type=kind, apply=apply, head_dim=n if attn else None,
                                        precision=torch.float32)
        for module, loc in locations:
            weights[f"{module}.{gname}_{loc}.weight"] = slot["matrix"]
        if not plain:
            why = "random signs" if slot["stage"].signs is not None else f"order {n} is not Sylvester's"
            notes.append(f"{gname} (n={n}, {why}): written as random-hadamard with its matrix stored per module "
                         f"(<module>.{gname}_<location>.weight); a reader that regenerates random-hadamard "
                         "matrices from a seed instead of loading them computes a different model")
    notes.append("transformers' compressed-tensors loader (checked with transformers 5.24, compressed-tensors "
                 "0.20) reads the weights but skips the online transforms (their weights load as unexpected "
                 "keys), so it computes a different model; rotaquant.load_model applies them")
    return TransformConfig(config_groups=groups), weights, notes

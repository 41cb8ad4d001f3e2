"""Stages as data: the side file of a quantized export (``rotaquant_stages.json`` + tensors).

compressed-tensors' config describes most of a rotaquant model, but not all of it exactly
(random signs shared per layer group, orders that are not powers of two, clip ratios, the
per-head activation scales of ``o_proj``). rotaquant therefore writes every stage it holds,
site by site, to a JSON file whose tensors (signs) sit in ``rotaquant_stages.safetensors``,
and rebuilds the model from that on reload, exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError
from ..quant.quantizer import ActQuantizer, QuantSpec
from ..rotation.online import OnlineHadamard
from ..stages import add_attention_stage, add_input_stage, stage_map
from ..stages.attention import ATTENTION_CHILD
from ..stages.sites import INPUT_CHILD

STAGES_JSON = "rotaquant_stages.json"
STAGES_TENSORS = "rotaquant_stages.safetensors"
SIDE_FORMAT = 1


class ExportError(ConfigError):
    """The model holds something a quantized export cannot write (an unknown stage type)."""


def require_compressed_tensors(what: str, error=ConfigError) -> None:
    """Raise ``error`` saying how to install compressed-tensors if it is missing."""
    import importlib.util

    if importlib.util.find_spec("compressed_tensors") is None:
        raise error(f"{what} needs the compressed-tensors package: pip install 'rotaquant[export]' "
                    "(compressed-tensors==0.20.0)")


def _pipeline(model: nn.Module, module_name: str, site: str):
    owner = model.get_submodule(module_name)
    if site == "input":
        return owner._modules[INPUT_CHILD]
    return getattr(owner._modules[ATTENTION_CHILD], site)


def describe_stages(model: nn.Module) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Every stage of ``model`` as ``(entries, tensors)``: one entry per stage with its site,
    name, type and parameters; the tensors (signs) keyed as the entries say.

    Raises:
        ExportError: a stage is neither an OnlineHadamard nor an ActQuantizer.
    """
    entries, tensors = [], {}
    for key, names in stage_map(model).items():
        module_name, site = key.rsplit(":", 1)
        pipe = _pipeline(model, module_name, site)
        for name in names:
            stage = pipe.stages[name]
            entry = {"module": module_name, "site": site, "name": name}
            if isinstance(stage, OnlineHadamard):
                entry.update(type="hadamard", n=stage.n)
                if stage.signs is not None:
                    tkey = f"{module_name}:{site}:{name}.signs"
                    tensors[tkey] = stage.signs.detach().to(torch.float32).cpu().contiguous()
                    entry["signs"] = tkey
            elif isinstance(stage, ActQuantizer):
                entry.update(type="act_quant", spec=stage.spec.to_dict())
            else:
                raise ExportError(f"stage {name!r} at {key} is a {type(stage).__name__}; a quantized export "
                                  "can write OnlineHadamard and ActQuantizer stages only")
            entries.append(entry)
    return entries, tensors


def write_side_file(folder: Path, entries: list[dict], tensors: dict, info: dict) -> None:
    """Write the stage list (and ``info``) as JSON and the tensors as safetensors into ``folder``."""
    from safetensors.torch import save_file

    save_file(tensors, str(folder / STAGES_TENSORS), metadata={"format": "pt"})
    doc = {"format": SIDE_FORMAT, "stages": entries, **info}
    (folder / STAGES_JSON).write_text(json.dumps(doc, indent=1, default=str) + "\n")


def read_side_file(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The side file's JSON document and tensors; a missing or unreadable one is a ModelLoadError."""
    from safetensors.torch import load_file

    path = folder / STAGES_JSON
    try:
        doc = json.loads(path.read_text())
        tensors = load_file(str(folder / STAGES_TENSORS))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder} looks like a rotaquant quantized export but its side file cannot be read "
                             f"({exc}); export the model again") from None
    if not isinstance(doc, dict) or doc.get("format") != SIDE_FORMAT or not isinstance(doc.get("stages"), list):
        raise ModelLoadError(f"{path}: unknown side-file format {doc.get('format') if isinstance(doc, dict) else doc!r} "
                             f"(this rotaquant reads format {SIDE_FORMAT})")
    return doc, tensors


def rebuild_stage(entry: dict, tensors: dict) -> nn.Module:
    """The stage module an entry of :func:`describe_stages` describes."""
    kind = entry.get("type")
    if kind == "hadamard":
        signs = tensors[entry["signs"]] if entry.get("signs") else None
        return OnlineHadamard(int(entry["n"]), signs)
    if kind == "act_quant":
        return ActQuantizer(QuantSpec.from_dict(entry["spec"]))
    raise ModelLoadError(f"side file: unknown stage type {kind!r} for {entry.get('module')}:{entry.get('site')}")


def attach_stage(model: nn.Module, entry: dict, stage: nn.Module) -> None:
    """Put ``stage`` back at its site (mutates ``model``)."""
    try:
        owner = model.get_submodule(entry["module"])
    except AttributeError:
        raise ModelLoadError(f"side file names module {entry['module']!r}, which this model does not have; "
                             "the side file does not belong to this checkpoint") from None
    device = next(iter(owner.parameters()), torch.empty(0)).device
    if entry["site"] == "input":
        add_input_stage(owner, entry["name"], stage.to(device), replace=True)
    else:
        add_attention_stage(model, owner, entry["site"], entry["name"], stage.to(device), replace=True)

"""Reload a rotaquant compressed-tensors export with packed weights and real kernels.

The model is built from ``config.json`` (without its quantization config) with uninitialised
weights, every quantized linear is replaced by a :class:`~rotaquant.quant.qlinear.QuantLinear`
holding the integer codes read from the checkpoint (the compressed-tensors config says which
modules and how; rotaquant's side file must agree), the other tensors are loaded as they are,
and the stages of the side file are put back at their sites. The input quantizer of each
quantized linear moves into the QuantLinear, so an integer kernel can quantize and multiply in
one place; the rotations stay stages and run before it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from ..quant.qlinear import QuantLinear, set_kernels, share_inputs
from ..quant.quantizer import QuantSpec
from .compressed import EXPORT_KIND, INDEX_NAME, ct_offset
from .stages_io import (
    STAGES_JSON,
    attach_stage,
    read_side_file,
    rebuild_stage,
    require_compressed_tensors,
)

logger = logging.getLogger(__name__)


def is_quantized_export(folder: str | Path) -> bool:
    """Whether ``folder`` is a compressed-tensors checkpoint with rotaquant's side file."""
    folder = Path(folder)
    try:
        qc = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return qc.get("quant_method") == "compressed-tensors" and (folder / STAGES_JSON).is_file()


def check_not_stripped(folder: str | Path) -> None:
    """A compressed-tensors folder that declares online transforms but lacks rotaquant's side file
    would load (through transformers) without them, silently wrong: refuse it by name."""
    folder = Path(folder)
    try:
        qc = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError, AttributeError):
        return
    groups = ((qc.get("transform_config") or {}).get("config_groups") or {}) if isinstance(qc, dict) else {}
    if qc.get("quant_method") == "compressed-tensors" and groups and not (folder / STAGES_JSON).is_file():
        raise ModelLoadError(f"{folder} declares online transforms ({', '.join(sorted(groups))}) but has no "
                             f"{STAGES_JSON}; transformers would load it without them (a different model). "
                             "Copy the whole export folder, or export it again")


def _matches(target: str, name: str, module: nn.Module) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or target == type(module).__name__


def _schemes(qc: dict, model: nn.Module, folder: Path) -> dict[str, QuantSpec]:
    """``{module name: weight spec}`` from the compressed-tensors config (validated by its package)."""
    from compressed_tensors.quantization import QuantizationConfig

    try:
        config = QuantizationConfig.model_validate(qc)
    except Exception as exc:  # pydantic's ValidationError and the package's own ValueErrors
        raise ModelLoadError(f"{folder}/config.json: quantization_config is not a valid compressed-tensors "
                             f"config ({str(exc).splitlines()[0]}); the file was edited or is corrupt") from None
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(_matches(t, name, module) for t in config.ignore or []):
            continue
        for gname, scheme in config.config_groups.items():
            if any(_matches(t, name, module) for t in scheme.targets):
                w = scheme.weights
                if (w is None or w.type not in ("int", "float") or w.strategy not in ("channel", "group")
                        or (w.type == "float" and (w.num_bits != 8 or not w.symmetric))):
                    raise ModelLoadError(f"{folder}: config group {gname} ({w}) is not a scheme rotaquant wrote; "
                                         "rotaquant reloads int (or FP8 e4m3) weights per channel or per group")
                found[name] = QuantSpec(bits=w.num_bits, symmetric=w.symmetric, type=str(w.type),
                                        group_size=w.group_size if w.strategy == "group" else None)
                break
    return found


def _codes(tensors, name: str, spec: QuantSpec, folder: Path, device: torch.device):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    def get(key):
        try:
            return tensors.get_tensor(f"{name}.{key}").to(device)  # unpacked there (GPU: fast)
        except Exception:  # safetensors raises its own error type for a missing key
            raise ModelLoadError(f"{folder}: the checkpoint lacks {name}.{key} that its config implies; "
                                 "the export is incomplete or its config was edited") from None

    off, scale = ct_offset(spec), get("weight_scale").to(torch.float32)
    if spec.type == "float":
        codes = get("weight")
        if codes.dtype != torch.float8_e4m3fn or codes.dim() != 2:
            raise ModelLoadError(f"{folder}: {name}.weight is {codes.dtype} {tuple(codes.shape)}, expected 2-d "
                                 "float8_e4m3fn codes for float-quantized weights; the config does not match")
        groups = codes.shape[1] // (spec.group_size or codes.shape[1])
        if tuple(scale.shape) != (codes.shape[0], groups):
            raise ModelLoadError(f"{folder}: {name}.weight_scale has shape {tuple(scale.shape)}, expected "
                                 f"{(codes.shape[0], groups)} for {spec}; the config does not match the weights")
        return codes, scale, torch.zeros_like(scale)
    if spec.bits < 8:
        shape = torch.Size(get("weight_shape").cpu().tolist())
        codes = unpack_from_int32(get("weight_packed"), spec.bits, shape)
    else:
        codes = get("weight")
        shape = codes.shape
    groups = shape[1] // (spec.group_size or shape[1])
    if tuple(scale.shape) != (shape[0], groups):
        raise ModelLoadError(f"{folder}: {name}.weight_scale has shape {tuple(scale.shape)}, expected "
                             f"{(shape[0], groups)} for {spec}; the config does not match the weights")
    codes = codes.to(torch.int32) + off  # rotaquant's convention (0..2^b-1 when asymmetric)
    if spec.symmetric:
        zero = torch.zeros_like(scale)
    else:
        zp = get("weight_zero_point")
        zp = unpack_from_int32(zp, spec.bits, torch.Size((shape[0], groups)), packed_dim=0) if spec.bits < 8 else zp
        zero = zp.to(torch.float32) + off
    return codes, scale, zero


def _empty_model(folder: Path, dtype: torch.dtype, attn_implementation: str | None, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:  # then the weights are initialised (slower, same result)
            from contextlib import nullcontext as no_init_weights
    with torch.device(device), no_init_weights():  # allocated where it runs, never initialised
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model


def _input_groups(model: nn.Module) -> list[list[str]]:
    """:func:`~rotaquant.models.architecture.input_groups` of the model's registered architecture;
    none when it is not known."""
    from ..models.architecture import input_groups
    from ..rotation.registry import lookup

    try:
        return input_groups(model, lookup(model).config.architecture)
    except Exception as exc:  # sharing is an optimisation: without the spec every linear quantizes its input
        logger.info("no input sharing between linears (%s)", exc)
        return []


def _weight_files(folder: Path) -> list[Path]:
    """The export's weight files: the shards its index names (each must exist), else every
    ``*.safetensors`` but rotaquant's stage tensors."""
    index = folder / INDEX_NAME
    if not index.is_file():
        return [f for f in sorted(folder.glob("*.safetensors")) if f.name != "rotaquant_stages.safetensors"]
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelLoadError(f"{index} is not a safetensors index ({err}); the export is damaged") from None
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ModelLoadError(f"{folder}: the shard {missing[0]} named by {INDEX_NAME} is missing "
                             f"({len(missing)} of {len(names)}); the export is incomplete")
    return [folder / n for n in names]


def _open_safetensors(path: Path):
    """``safe_open(path)``, a damaged file named as such."""
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error type for truncated or foreign files
        raise ModelLoadError(f"{path} is not a readable safetensors file ({err}); the export is damaged") from None


def load_quantized(folder: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                   kernel: str = "auto", attn_implementation: str | None = "sdpa"):
    """``(model, tokenizer)`` from a rotaquant compressed-tensors export.

    Args:
        folder: the export folder.
        dtype: the dtype of the float tensors and activations.
        device: where the model runs.
        kernel: ``auto``, ``reference``, ``int4mm``, ``int8mm`` or ``fp8mm`` (see :mod:`rotaquant.quant.qlinear`).

    Raises:
        ModelLoadError: the folder is not such an export, or its config and tensors disagree.
    """
    from transformers import AutoTokenizer, GenerationConfig

    from ..rotation.rotate import RECORD_CHILD, RotationRecord

    folder = Path(folder)
    if not is_quantized_export(folder):
        raise ModelLoadError(f"{folder} is not a rotaquant quantized export (it needs config.json with a "
                             f"compressed-tensors quantization_config and {STAGES_JSON}); write one with "
                             "rotaquant ptq --output or rotaquant.export")
    require_compressed_tensors(f"loading the quantized export {folder}", ModelLoadError)
    side, side_tensors = read_side_file(folder)
    if side.get("kind") != EXPORT_KIND:
        raise ModelLoadError(f"{folder}/{STAGES_JSON} is not a {EXPORT_KIND} side file (kind {side.get('kind')!r})")
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    device = torch.device(device)
    model = _empty_model(folder, dtype, attn_implementation, device)
    specs = _schemes(qc, model, folder)
    recorded = set(side.get("weights", {}))
    if set(specs) != recorded:
        odd = sorted(set(specs) ^ recorded)
        raise ModelLoadError(f"{folder}: config.json quantizes {len(specs)} linears, the side file {len(recorded)} "
                             f"(e.g. {odd[0]}); the config was edited or the files come from different exports")
    for name, spec in specs.items():
        saved = QuantSpec.from_dict(side["weights"][name]["spec"])
        if (saved.type, saved.bits, saved.symmetric, saved.group_size) != (spec.type, spec.bits, spec.symmetric,
                                                                            spec.group_size):
            raise ModelLoadError(f"{folder}: {name} is {spec} in config.json but {saved} in the side file; "
                                 "the config was edited")
    acts = {e["module"]: QuantSpec.from_dict(e["spec"]) for e in side["stages"]
            if e["type"] == "act_quant" and e["site"] == "input" and e["module"] in specs}
    files = _weight_files(folder)
    rest = {}
    for path in files:
        with _open_safetensors(path) as tensors:
            keys = set(tensors.keys())
            for name, spec in specs.items():
                if f"{name}.weight_scale" not in keys:
                    continue
                old = model.get_submodule(name)
                codes, scale, zero = _codes(tensors, name, spec, folder, device)
                bias = tensors.get_tensor(f"{name}.bias").to(dtype) if f"{name}.bias" in keys else None
                model.set_submodule(name, QuantLinear(codes, scale, zero, spec, bias, acts.get(name)))
                del old
            quant_keys = {k for k in keys if k.rsplit(".", 1)[0] in specs}
            transform_keys = {k for k in keys if re.search(r"\.[A-Za-z0-9_]+_(input|q_attn|k_cache)\.weight$", k)}
            for key in keys - quant_keys - transform_keys:
                rest[key] = tensors.get_tensor(key)
    missing_q = [n for n in specs if not isinstance(model.get_submodule(n), QuantLinear)]
    if missing_q:
        raise ModelLoadError(f"{folder}: no quantized tensors for {missing_q[0]} ({len(missing_q)} linears)")
    result = model.load_state_dict(rest, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied and k.rsplit(".", 1)[0] not in specs]
    if missing or result.unexpected_keys:
        what = missing[:1] or result.unexpected_keys[:1]
        raise ModelLoadError(f"{folder}: tensors do not match the model ({len(missing)} missing, "
                             f"{len(result.unexpected_keys)} unexpected, e.g. {what[0]})")
    if tied:
        model.tie_weights()
    for entry in side["stages"]:
        if entry["type"] == "act_quant" and entry["site"] == "input" and entry["module"] in specs:
            continue  # owned by the QuantLinear
        attach_stage(model, entry, rebuild_stage(entry, side_tensors))
    if side.get("rotation") is not None:
        model.add_module(RECORD_CHILD, RotationRecord(side["rotation"]))
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    model = model.to(device=device).eval()
    for module in model.modules():  # QuantLinear buffers keep their dtypes; floats follow dtype
        if isinstance(module, QuantLinear) and module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)
    counts = set_kernels(model, kernel)
    share_inputs(model, _input_groups(model))
    logger.info("loaded %s: %s", folder, ", ".join(f"{v} linears on {k}" for k, v in counts.items()))
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model.config.name_or_path = folder.name
    return model, tokenizer

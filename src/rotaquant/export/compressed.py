"""Export a quantized model as a compressed-tensors checkpoint (what vLLM and transformers load).

Layout of the folder (written atomically, marked as a rotaquant output):

* ``config.json`` with ``quantization_config`` (``quant_method: compressed-tensors``, config
  groups, ``kv_cache_scheme``, ``ignore``, ``transform_config``), written by compressed-tensors'
  own ``ModelCompressor.update_config``;
* ``model.safetensors`` (above ``SHARD_BYTES``: ``model-0000i-of-0000N.safetensors`` shards and
  ``model.safetensors.index.json``, as transformers writes them): quantized linears as ``weight_packed`` (int32, compressed-tensors'
  dense bit packing) + ``weight_shape`` for 2..7 bits, or ``weight`` (int8) for 8 bits, with
  ``weight_scale`` (float32, ``[out, groups]``) and ``weight_zero_point`` (asymmetric; signed
  codes as compressed-tensors keeps them); FP8 weights as ``weight`` (float8_e4m3fn) with
  ``weight_scale`` (``float-quantized``); online Hadamard matrices at
  ``<module>.<scheme>_<location>.weight``; everything else as it is in the model;
* the tokenizer and ``generation_config.json``;
* ``rotaquant_stages.json`` + ``rotaquant_stages.safetensors``: every stage exactly (see
  :mod:`.stages_io`), with the list of what the compressed-tensors config cannot express.

The tensors are produced one linear at a time and written a shard at a time, so an export needs
about two shards of memory beyond the model (safetensors copies a file's tensors into bytes
before writing them), not a second copy of the whole checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_directory, to_json
from ..quant.quantizer import QuantSpec
from ..quant.weights import WEIGHT_CHILD
from .ct_config import quantization_config, transform_config
from .stages_io import ExportError, describe_stages, require_compressed_tensors, write_side_file

logger = logging.getLogger(__name__)
EXPORT_KIND = "rotaquant-compressed-tensors"
SHARD_BYTES = 2 * 2**30  # the most tensor bytes in one safetensors file of an export
INDEX_NAME = "model.safetensors.index.json"


def ct_offset(spec: QuantSpec) -> int:
    """What compressed-tensors' signed codes are shifted by from rotaquant's (asymmetric grids
    are ``[0, 2^b - 1]`` here, ``[-2^(b-1), 2^(b-1) - 1]`` there; symmetric grids agree)."""
    return 0 if spec.symmetric else 2 ** (spec.bits - 1)


def compressed_weight_tensors(rec) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors (local names) of a :class:`QuantizedWeight`."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    spec, off = rec.spec, ct_offset(rec.spec)
    out = {"weight_scale": rec.scale.detach().to(torch.float32).cpu().contiguous()}
    if spec.type == "float":  # e4m3 codes as they are (float-quantized)
        out["weight"] = rec.codes.to(torch.float8_e4m3fn).cpu().contiguous()
        return out
    codes = rec.codes.to(torch.int32)
    if not spec.symmetric:  # asymmetric codes are >= 0: undo an int8 wrap of 8-bit codes >= 128
        codes = codes % 256
    codes = (codes - off).to(torch.int8)  # packed where the codes are (GPU: fast), stored from CPU
    if spec.bits < 8:
        out["weight_packed"] = pack_to_int32(codes, spec.bits).cpu()
        out["weight_shape"] = torch.tensor(list(codes.shape), dtype=torch.int64)
    else:
        out["weight"] = codes.cpu().contiguous()
    if not spec.symmetric:
        zp = (rec.zero.detach().round().to(torch.int32) - off).to(torch.int8)
        zp = pack_to_int32(zp, spec.bits, packed_dim=0) if spec.bits < 8 else zp
        out["weight_zero_point"] = zp.cpu().contiguous()
    return out


def _quantized_linears(model: nn.Module, entries: list[dict]) -> dict:
    acts = {e["module"]: QuantSpec.from_dict(e["spec"]) for e in entries
            if e["type"] == "act_quant" and e["site"] == "input"}
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and isinstance(module._modules.get(WEIGHT_CHILD), nn.Module):
            found[name] = (module, acts.get(name))
    missing = sorted(set(acts) - set(found))
    if missing:
        raise ExportError(f"{missing[0]} quantizes its input activations but not its weight ({len(missing)} such "
                          "linears); a compressed-tensors export needs quantized weights (w_bits < 16)")
    return found


def _kv_specs(entries: list[dict]) -> tuple[QuantSpec | None, QuantSpec | None]:
    out = {}
    for e in entries:
        if e["type"] == "act_quant" and e["site"] in ("key", "value"):
            out.setdefault(e["site"], QuantSpec.from_dict(e["spec"]))
    return out.get("key"), out.get("value")


def _head_dim(config) -> int | None:
    hd = getattr(config, "head_dim", None)
    if hd:
        return int(hd)
    heads = getattr(config, "num_attention_heads", None)
    return config.hidden_size // heads if heads else None


def _own(tensor: torch.Tensor, seen: set) -> torch.Tensor:
    """``tensor`` on the CPU, contiguous and alone in its storage (safetensors refuses shared
    storage); copied only when it is not already so."""
    t = tensor.detach().to("cpu")
    storage = t.untyped_storage()
    if not t.is_contiguous() or storage.nbytes() != t.numel() * t.element_size() or storage.data_ptr() in seen:
        t = t.contiguous().clone()
    if t.numel():
        seen.add(t.untyped_storage().data_ptr())
    return t


def _export_tensors(model: nn.Module, linears: dict, extra: dict,
                    dtype: torch.dtype | None) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Groups of ``(key, CPU tensor)`` of the checkpoint: a quantized linear's compressed-tensors
    tensors together (made when reached; the reloader reads a linear from one file), everything
    else one by one as the model holds it (cast to ``dtype``)."""
    quantized = {f"{name}.weight": lin for name, (lin, _) in linears.items()}
    tied = getattr(model.config, "tie_word_embeddings", False)
    seen: set = set()
    for key, value in model.state_dict().items():
        if ".rq_" in f".{key}" or key.startswith("rq_") or (tied and key == "lm_head.weight"):
            continue
        if key in quantized:
            name = key[: -len(".weight")]
            yield [(f"{name}.{local}", _own(tensor, seen))
                   for local, tensor in compressed_weight_tensors(quantized[key].rq_weight).items()]
            continue
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        yield [(key, _own(value, seen))]
    for key, value in extra.items():
        yield [(key, _own(value, seen))]


def write_shards(groups: Iterator[list[tuple[str, torch.Tensor]]], folder: Path,
                 max_bytes: int = SHARD_BYTES) -> list[str]:
    """Write the tensors of ``groups`` into ``folder`` as ``model.safetensors``, or when they
    exceed ``max_bytes`` as numbered shards plus ``model.safetensors.index.json`` (transformers'
    layout); a group never straddles two shards (one larger than ``max_bytes`` fills a shard
    alone) and a shard is written as soon as it is full. Returns the file names."""
    from safetensors.torch import save_file

    shard, size, total, parts = {}, 0, 0, []

    def flush():
        name = f".part-{len(parts):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        parts.append((name, list(shard)))
        shard.clear()

    for group in groups:
        nbytes = sum(tensor.numel() * tensor.element_size() for _, tensor in group)
        if shard and size + nbytes > max_bytes:
            flush()
            size = 0
        shard.update(group)
        size, total = size + nbytes, total + nbytes
    if shard or not parts:
        flush()
    if len(parts) == 1:
        os.replace(folder / parts[0][0], folder / "model.safetensors")
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, (part, keys) in enumerate(parts):
        name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        os.replace(folder / part, folder / name)
        names.append(name)
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names


def export_quantized(model: nn.Module, tokenizer, output: str | os.PathLike, overwrite: bool = False,
                     metadata: dict | None = None, dtype: str | torch.dtype | None = None,
                     transform_weights: bool = True, max_shard_bytes: int = SHARD_BYTES) -> dict:
    """Write a quantized (``rotaquant.quantize``-d) model as a compressed-tensors checkpoint.

    Args:
        model: the fake-quantized model; its linears carry ``rq_weight`` records (not mutated).
        tokenizer: saved beside the weights (None: no tokenizer files).
        output: the folder to write (atomically: nothing appears unless everything succeeded).
        overwrite: replace an earlier rotaquant output there.
        metadata: extra JSON-able information stored in the side file under ``metadata``.
        dtype: store the unquantized float tensors (embeddings, norms, head) in this dtype
            (default: the model's; a reload then equals the model only in that dtype).
        transform_weights: store each online Hadamard's matrix per module, as compressed-tensors
            lays them out (what its readers load for ``random-hadamard``). They cost ``n^2`` bf16
            values per module (R4 of a 7B model: 11008^2 * 2 bytes = 242 MB a layer); False leaves
            them out: rotaquant still reloads exactly (side file), other readers cannot apply them.
        max_shard_bytes: the most tensor bytes per safetensors file; larger checkpoints are
            written as shards with an index (default 2 GiB).

    Returns:
        ``{"output", "format", "config_groups", "transforms", "notes"}``; ``notes`` lists what
        compressed-tensors' config cannot express (exact in rotaquant's side file).

    Raises:
        ExportError: no quantized weights, or a stage an export cannot write.
        ConfigError: ``max_shard_bytes`` is not positive.
    """
    if max_shard_bytes < 1:
        raise ConfigError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    require_compressed_tensors("a quantized export", ExportError)
    from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor

    entries, side_tensors = describe_stages(model)
    linears = _quantized_linears(model, entries)
    if not linears:
        raise ExportError("the model has no quantized weights (no linear carries an rq_weight record): run "
                          "rotaquant.quantize with w_bits < 16 first")
    all_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    qc, notes = quantization_config(linears, all_linears, _kv_specs(entries), _head_dim(model.config))
    stages = {}
    for e in entries:
        owner = model.get_submodule(e["module"])
        pipe = owner.rq_input if e["site"] == "input" else getattr(owner.rq_attention, e["site"])
        stages[(e["module"], e["site"], e["name"])] = pipe.stages[e["name"]]
    attention = {e["module"] for e in entries if e["site"] != "input"}
    tc, matrices, tnotes = transform_config(entries, stages, attention)
    notes += tnotes
    if not transform_weights and matrices:
        matrices = {}
        notes.append("transform matrices left out (transform_weights=False): only rotaquant can apply the "
                      "random-hadamard transforms of this checkpoint")
    from ..models.loading import resolve_dtype

    dtype = None if dtype is None else resolve_dtype(dtype)
    record = model._modules.get("rq_rotation")
    info = {"kind": EXPORT_KIND, "dtype": str(dtype or next(model.parameters()).dtype).replace("torch.", ""),
            "rotation": getattr(record, "summary", None),
            "weights": {n: {"method": lin.rq_weight.method, "spec": lin.rq_weight.spec.to_dict()}
                        for n, (lin, _) in linears.items()},
            "not_expressed_by_compressed_tensors": notes, "metadata": metadata or {}}
    to_json(info)  # refuse NaN/inf metadata before anything is written
    with atomic_directory(output, overwrite=overwrite) as tmp:
        config = copy.deepcopy(model.config)
        config.save_pretrained(tmp)
        ModelCompressor(quantization_config=qc, transform_config=tc).update_config(str(tmp))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        write_shards(_export_tensors(model, linears, matrices, dtype), tmp, max_shard_bytes)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(tmp)
        write_side_file(tmp, entries, side_tensors, info)
    for note in notes:
        logger.warning("export: %s", note)
    logger.info("wrote %s (%s, %d quantized linears)", output, qc.format, len(linears))
    return {"output": str(Path(output)), "format": qc.format, "config_groups": len(qc.config_groups),
            "quantized_linears": len(linears), "transforms": sorted(tc.config_groups) if tc else [],
            "notes": notes}

"""Load a causal LM and its tokenizer from local files only.

Accepted sources, in the order they are tried:

* a built-in alias (``smollm2-135m``), resolved to a file shipped inside an installed package;
* a ``.gguf`` file (dequantized by transformers; the result is cached as a standard HF folder,
  keyed by the file's sha256, so later loads skip the slow GGUF conversion);
* a local Hugging Face folder (``config.json`` + safetensors);
* a hub id that is already in the local Hugging Face cache.

Nothing is ever downloaded: every ``from_pretrained`` call passes ``local_files_only=True``
(importing rotaquant changes no environment variable; the CLI sets ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ConfigError, ModelLoadError, ModelNotFoundError, OfflineError
from ..io import atomic_directory, check_writable_output, sweep_stale_temps, to_json
from .aliases import ALIASES, ModelAlias

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}
GGUF_MAGIC = b"GGUF"
CACHE_FORMAT = 1  # bump when the cached folder layout changes


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"bf16"``, ``"float32"``, ... or a ``torch.dtype`` to a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` means CUDA when available, else CPU; a device that does not exist here
    (``gpu``, ``cuda`` on a CPU-only torch, ``cuda:3`` on a 1-GPU host) is a :class:`ConfigError`."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise ConfigError(f"unsupported device {str(device)!r}; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no visible CUDA GPU"
            raise ConfigError(f"device {str(device)!r} asked for, but this host has {build} "
                              f"(torch {torch.__version__}); use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def cache_root() -> Path:
    """Where converted models are cached: ``$ROTAQUANT_CACHE_DIR`` or ``~/.cache/rotaquant``."""
    env = os.environ.get("ROTAQUANT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rotaquant"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is ``gguf``, ``folder`` or ``hub-cache``."""

    kind: str
    path: str
    name: str


def _alias_file(alias: ModelAlias) -> Path:
    """Locate an alias's file in its installed distribution without importing the package."""
    spec = importlib.util.find_spec(alias.module)
    roots: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(p) for p in spec.submodule_search_locations]
    else:
        try:
            dist = importlib.metadata.distribution(alias.distribution)
            roots += [Path(str(dist.locate_file(alias.module)))]
        except importlib.metadata.PackageNotFoundError:
            pass
    for root in roots:
        if (root / alias.filename).is_file():
            return root / alias.filename
    raise ModelNotFoundError(
        f"model alias {alias.name!r} needs the package {alias.distribution!r}, which is not "
        f"installed (or lacks {alias.filename}). Install it with:\n    {alias.install_command}"
    )


def resolve_source(name_or_path: str | os.PathLike) -> ModelSource:
    """Decide what ``name_or_path`` refers to, or raise a named error saying what to do."""
    name = str(name_or_path)
    if name.lower() in ALIASES:
        return ModelSource("gguf", str(_alias_file(ALIASES[name.lower()])), name.lower())
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource("gguf", str(path.resolve()), path.stem)
        raise ModelLoadError(
            f"{path} is a file but not a .gguf; pass a .gguf file or a Hugging Face model folder "
            "(config.json + *.safetensors)"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder without config.json; it is not a HF model folder")
        return ModelSource("folder", str(path.resolve()), path.name)
    looks_like_path = name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1
    if looks_like_path or "/" not in name:
        known = ", ".join(sorted(ALIASES))
        raise ModelNotFoundError(
            f"model {name!r} not found: it is neither a built-in alias ({known}), "
            "nor an existing .gguf file, nor a local Hugging Face folder"
        )
    return ModelSource("hub-cache", name, name.replace("/", "--"))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_gguf_header(path: Path) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (its first bytes are {magic!r}, expected {GGUF_MAGIC!r}); "
            "the file is corrupt or of another format"
        )


def _save_dequantized(model, folder: Path) -> None:
    """Save a GGUF-loaded model as a plain float32 HF checkpoint (config + safetensors).

    ``save_pretrained`` refuses GGUF-quantized models, but after loading the weights are
    ordinary dequantized tensors: we write them ourselves and drop the GGUF marker from the
    config so the folder reloads as a full-precision checkpoint.
    """
    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _convert_gguf(path: Path, target: Path) -> None:
    """Dequantize a GGUF file with transformers and save it as an HF folder at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ModelLoadError(f"loading GGUF needs the package {module!r}: pip install {module}")
    check_gguf_complete(path)
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
    except (ValueError, KeyError, OSError, RuntimeError, IndexError, struct.error) as exc:
        raise ModelLoadError(f"transformers could not read the GGUF file {path}: {exc}") from exc
    with atomic_directory(target, overwrite=True, require_marker=False) as tmp:
        _save_dequantized(model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "rotaquant-source.json").write_text(
            to_json({"gguf": str(path), "format": CACHE_FORMAT}, indent=1)
        )
    logger.info("converted %s in %.1f s, cached at %s", path.name, time.perf_counter() - started, target)


def check_gguf_complete(path: Path) -> None:
    """Parse the GGUF metadata and tensor table; a truncated or corrupt file is a ModelLoadError."""
    from gguf import GGUFReader

    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
    except (struct.error, ValueError, IndexError, KeyError, EOFError) as exc:
        raise ModelLoadError(f"{path} is truncated or corrupt ({size} bytes; its metadata or tensor table "
                             f"cannot be parsed: {exc}); copy or download the file again") from None
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ModelLoadError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}; "
                             "copy or download the file again")


@contextlib.contextmanager
def _conversion_lock(root: Path) -> Iterator[None]:
    """An exclusive lock file in the cache, so concurrent first uses convert the GGUF once."""
    import fcntl

    with open(root / ".convert.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def gguf_cache_folder(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cached HF folder for a GGUF file, converting it on first use.

    The cache is checked for writing before the (slow) conversion; temporary folders of killed
    conversions older than an hour are removed; a lock file makes concurrent processes wait for
    one conversion instead of each converting.
    """
    path = Path(path)
    _check_gguf_header(path)
    root = (Path(cache_dir) if cache_dir else cache_root()).expanduser() / "gguf"
    target = root / f"{file_sha256(path)[:24]}-v{CACHE_FORMAT}"
    if (target / "config.json").is_file():
        return target
    check_writable_output(target, "dir", overwrite=True, require_marker=False)
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(root)
    with _conversion_lock(root):
        if not (target / "config.json").is_file():  # another process may have converted it meanwhile
            logger.info("first use of %s: converting GGUF to a cached HF folder (slow once)", path.name)
            _convert_gguf(path, target)
    return target


def _load_folder(folder: str, dtype: torch.dtype, device: torch.device, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, local_files_only=True, **kwargs
        )
    except OSError as exc:
        if not Path(folder).exists():
            raise OfflineError(
                f"{folder!r} is not a local path and is not in the local Hugging Face cache; "
                "rotaquant works offline and never downloads. Copy the model folder here and "
                "pass its path (or a .gguf file)."
            ) from exc
        raise ModelLoadError(f"could not load the model folder {folder}: {exc}") from exc
    return model.to(device).eval(), tokenizer


def load_model(
    name_or_path: str | os.PathLike | ModelConfig,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "cpu",
    cache_dir: str | os.PathLike | None = None,
    attn_implementation: str | None = "sdpa",
    kernel: str = "auto",
):
    """Load a causal LM and its tokenizer from local files.

    Args:
        name_or_path: a built-in alias (``smollm2-135m``), a ``.gguf`` file, a HF model folder,
            or a hub id already present in the local Hugging Face cache; or a
            :class:`~rotaquant.config.ModelConfig` (the recipe's ``model`` section), whose
            ``model``, ``dtype`` and ``device`` replace the arguments of the same meaning.
        dtype: the weights' dtype (``float32``, ``bf16``, ``fp16``, ``float64`` or a torch dtype).
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
        cache_dir: where GGUF conversions are cached (default ``$ROTAQUANT_CACHE_DIR`` or
            ``~/.cache/rotaquant``).
        attn_implementation: transformers' attention implementation.
        kernel: for a quantized export (``rotaquant ptq --output``): the matmul kernel of its
            quantized linears, ``auto``/``reference``/``int4mm``/``int8mm`` (see rotaquant.quant.qlinear).

    Returns:
        ``(model, tokenizer)``, the model in eval mode on ``device``.

    Raises:
        ModelNotFoundError, ModelLoadError, OfflineError: with a message saying what to do.
    """
    if isinstance(name_or_path, ModelConfig):
        name_or_path, dtype, device = name_or_path.model, name_or_path.dtype, name_or_path.device
    source = resolve_source(name_or_path)
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    folder = str(gguf_cache_folder(source.path, cache_dir)) if source.kind == "gguf" else source.path
    if source.kind == "folder":
        from ..export.reload import check_not_stripped, is_quantized_export, load_quantized

        check_not_stripped(folder)
        if is_quantized_export(folder):
            model, tokenizer = load_quantized(folder, dtype, device, kernel, attn_implementation)
            model.config.name_or_path = source.name
            return model, tokenizer
    model, tokenizer = _load_folder(folder, dtype, device, attn_implementation=attn_implementation)
    model.config.name_or_path = source.name
    return model, tokenizer

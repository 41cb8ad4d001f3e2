"""Safe file output: outputs are checked before any work, written to a temporary sibling and
renamed into place, so a failed run leaves no half file and never deletes what it did not write.

Every folder rotaquant writes carries a marker file (:data:`OUTPUT_MARKER`); ``--overwrite``
replaces only such a folder, and never the working directory, one of its ancestors or home.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from .errors import NonFiniteError, OutputError, RotaquantError

logger = logging.getLogger(__name__)
OUTPUT_MARKER = "rotaquant-output.json"
STALE_SECONDS = 3600  # a temporary folder untouched this long belongs to a dead run


def umask_mode(kind: Literal["file", "dir"] = "file") -> int:
    """The permission bits a new file (0o666) or folder (0o777) gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if kind == "dir" else 0o666) & ~mask


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_writable(folder: Path, what: Path) -> None:
    """Create and remove a file in ``folder`` (the real test: permissions, read-only mounts, root)."""
    if not folder.is_dir():
        raise OutputError(f"cannot write {what}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rotaquant-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write {what}: {folder} is not writable ({exc.strerror or exc}); "
                          "choose another output path") from None


def _protected(target: Path) -> str | None:
    """Why ``target`` must never be replaced (the cwd, an ancestor of it, home), else None."""
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is the working directory or one of its ancestors"
    home = Path.home().resolve()
    if resolved == home or resolved in home.parents:
        return "it is the home folder or one of its ancestors"
    return None


def check_writable_output(path: str | os.PathLike, kind: Literal["file", "dir"] = "file",
                          overwrite: bool = False, require_marker: bool = True) -> Path:
    """Check, before any work, that ``path`` can be written; returns it as a Path.

    Args:
        path: the output file or folder.
        kind: ``file`` (replaced atomically) or ``dir`` (a folder swapped in atomically).
        overwrite: an existing file, or a non-empty folder, may be replaced.
        require_marker: a non-empty folder is replaced only if rotaquant wrote it (it holds
            :data:`OUTPUT_MARKER`); caches of rotaquant's own pass False.

    Raises:
        OutputError: the path is the wrong kind, exists without ``overwrite``, is protected, or
            its folder is not writable. Nothing is written (a probe file is created and removed).
    """
    path = Path(path).expanduser()
    if kind == "file":
        if path.is_dir():
            raise OutputError(f"{path} is a folder; the output must be a file path")
        if path.exists() and not overwrite:
            raise OutputError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    else:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path} is a file; the output must be a folder (missing or empty)")
        why = _protected(path)
        if why:
            raise OutputError(f"refusing to write into {path}: {why}; choose a new folder")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise OutputError(f"{path} exists and is not empty; choose another output, or pass "
                                  "--overwrite to replace a previous rotaquant output")
            if require_marker and not (path / OUTPUT_MARKER).is_file():
                raise OutputError(f"{path} is not a rotaquant output (it has no {OUTPUT_MARKER}); --overwrite "
                                  "replaces only folders rotaquant wrote. Remove it yourself or choose another output")
    _probe_writable(_nearest_existing(path.parent), path)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parents are created; mode follows the umask)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, umask_mode("file"))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, RotaquantError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parents are created)."""
    return atomic_write_bytes(path, text.encode())


def first_non_finite(data: Any, where: str = "") -> tuple[str, float] | None:
    """``(key path, value)`` of the first NaN/inf float in nested dicts/lists (``a.b[2]``), else None."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "(top level)", data
    if isinstance(data, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in data.items())
    elif isinstance(data, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, key)
        if found:
            return found
    return None


def to_json(data: Any, indent: int | None = 2) -> str:
    """Strict JSON text: a NaN or infinity raises :class:`NonFiniteError` naming its key."""
    bad = first_non_finite(data)
    if bad:
        raise NonFiniteError(f"refusing to write {bad[0]} = {bad[1]}: JSON has no NaN/inf, and a "
                             "non-finite result means the run failed numerically")
    return json.dumps(data, indent=indent, default=str, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, strict JSON to ``path`` atomically (NaN/inf are refused)."""
    return atomic_write_text(path, to_json(data) + "\n")


def write_marker(folder: Path, **info: Any) -> None:
    """Mark ``folder`` as a rotaquant output, so a later ``--overwrite`` may replace it."""
    (folder / OUTPUT_MARKER).write_text(json.dumps({"written_by": "rotaquant", **info}, indent=1) + "\n")


def _apply_umask(folder: Path) -> None:
    """mkdtemp and some writers create 0700/0600 entries; give the tree the umask's modes."""
    dmode, fmode = umask_mode("dir"), umask_mode("file")
    for root, dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), fmode)
        for name in dirs:
            os.chmod(os.path.join(root, name), dmode)
    os.chmod(folder, dmode)


def sweep_stale_temps(parent: str | os.PathLike, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` folders in ``parent`` untouched for ``max_age`` s."""
    parent, removed = Path(parent), []
    if not parent.is_dir():
        return removed
    now = time.time()
    for entry in parent.iterdir():
        if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name) and entry.is_dir():
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > max_age:
                    shutil.rmtree(entry)
                    removed.append(entry)
    if removed:
        logger.info("removed %d stale temporary folder(s) in %s", len(removed), parent)
    return removed


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False,
                     require_marker: bool = True) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``target`` only if the block succeeds.

    ``target`` is checked first (:func:`check_writable_output`): an existing non-empty folder
    is replaced only with ``overwrite`` and only if it is a rotaquant output. The new folder is
    marked, renamed into place, and only then is the old one deleted; on any failure (an
    exception, Ctrl-C, SIGTERM through the CLI) the temporary folder is removed.
    """
    target = check_writable_output(target, "dir", overwrite, require_marker)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    old, swapped = None, False
    try:
        yield tmp
        write_marker(tmp)
        _apply_umask(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(target, old)
        os.replace(tmp, target)
        swapped = True
    except OSError as exc:
        if isinstance(exc, RotaquantError):
            raise
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if swapped:
                shutil.rmtree(old, ignore_errors=True)  # the new output is in place: only now
            else:
                os.replace(old, target)  # the swap failed half way: put the previous output back


def load_torch_file(path: str | os.PathLike, what: str, error: type[Exception] = RotaquantError) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with any failure raised as ``error``
    naming ``what`` and the file. The message never suggests ``weights_only=False``: loading
    pickles that way can run arbitrary code, so rotaquant never does it."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"{what} {path} is unreadable: {_torch_load_reason(exc)}") from None


def _torch_load_reason(exc: Exception) -> str:
    """A safe one-line reason: torch's advice to retry with ``weights_only=False`` is dropped."""
    import pickle
    import re

    text = str(exc)
    lower = text.lower()
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in lower or "weights only" in lower:
        # a truncated pickle and a foreign object both end here (torch names a garbled global)
        found = re.search(r"GLOBAL \S* was not an allowed global|[^.\n]*truncated[^.\n]*", text)
        detail = f" ({found.group(0).strip()})" if found else ""
        return ("it is truncated or corrupt, or it holds objects other than tensors and plain containers"
                f"{detail}; rotaquant reads tensors only and never unpickles other objects (that could run "
                "code from the file). Delete or replace the file")
    first = text.split(". ")[0].split("\n")[0].strip() or type(exc).__name__
    return (f"{first}; the file is truncated or corrupt (a run killed while writing it, or an incomplete copy): "
            "delete it or copy it again")

"""Package layering: ``rotation`` may import ``models``, never the reverse.

Two checks. The AST walk sees every import, also those inside functions (which is how the old
models <-> rotation cycle hid), so a lazy import cannot bring the cycle back unnoticed. The
subprocess imports a package in a fresh interpreter *without* running ``rotaquant/__init__``
(which imports everything) and looks at ``sys.modules``, so it sees what the package really pulls in.
"""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rotaquant"


def imported_packages(path: Path, root: Path = SRC) -> dict[str, int]:
    """Top-level rotaquant names that module ``path`` imports (at any depth), with a line each."""
    here = list(path.relative_to(root).parent.parts)
    found = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            names = target[:1] or [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rotaquant."):
            names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("rotaquant.")]
        else:
            continue
        for name in names:
            found.setdefault(name, node.lineno)
    return found


def test_the_walk_sees_relative_absolute_and_function_level_imports(tmp_path):
    (tmp_path / "models").mkdir()
    module = tmp_path / "models" / "probe.py"
    module.write_text("def f():\n    from ..rotation import spec\n    import rotaquant.quant.rtn\n"
                      "from .tiny import x\nfrom .. import eval\nfrom ..errors import ConfigError\n")
    assert set(imported_packages(module, tmp_path)) == {"rotation", "quant", "models", "eval", "errors"}


def test_models_never_imports_rotation():
    offenders = [f"{path.relative_to(SRC)}:{line}" for path in sorted((SRC / "models").rglob("*.py"))
                 for name, line in imported_packages(path).items() if name == "rotation"]
    assert not offenders, f"models/ must not import rotation/ (rotation -> models only): {offenders}"


def _fresh_import(*modules: str) -> list[str]:
    """rotaquant modules loaded after importing ``modules`` in a fresh process, root __init__ skipped."""
    code = (
        "import sys, types\n"
        f"root = types.ModuleType('rotaquant'); root.__path__ = [{str(SRC)!r}]\n"
        "sys.modules['rotaquant'] = root\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(' '.join(sorted(m for m in sys.modules if m.startswith('rotaquant.'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_importing_models_loads_no_rotation_module():
    modules = [f"rotaquant.models.{p.stem}" for p in sorted((SRC / "models").glob("*.py")) if p.stem != "__init__"]
    loaded = _fresh_import(*modules)
    assert set(modules) <= set(loaded)
    assert not [m for m in loaded if m.startswith("rotaquant.rotation")], loaded


def test_rotation_registry_imports_first():
    loaded = _fresh_import("rotaquant.rotation.registry", "rotaquant.rotation.rotate")
    assert "rotaquant.models.architecture" in loaded and "rotaquant.models.tiny" in loaded


WRITERS = {"atomic_write_bytes", "atomic_write_json", "atomic_directory", "write_text", "write_bytes",
           "save_file", "save_pretrained", "savefig"}


def _file_writes(path: Path) -> list[str]:
    """Calls in ``path`` that write files: the writers above, ``torch.save`` to a path (not to a
    buffer), and ``open`` for writing."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in WRITERS:
            found.append(f"{name}:{node.lineno}")
        elif name == "save" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch":
            target = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(target, ast.Name) and target.id in {"buf", "buffer", "fh"}):
                found.append(f"torch.save:{node.lineno}")
        elif name == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and any(c in str(node.args[1].value) for c in "wax"):
            found.append(f"open:{node.lineno}")
    return found


def test_the_write_scan_sees_each_kind_of_write(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import torch\ndef f(p, buf):\n    atomic_write_bytes(p, b'')\n    p.write_text('x')\n"
                      "    torch.save({}, p)\n    torch.save({}, buf)\n    open(p, 'wb')\n    open(p, 'rb')\n")
    assert [w.split(":")[0] for w in _file_writes(module)] == ["atomic_write_bytes", "write_text", "torch.save", "open"]


def test_algorithm_packages_write_no_files():
    """The jobs write rotation files and checkpoints (rotaquant.jobs.files); the algorithms only
    compute and serialize. (``export`` writes by definition; ``models`` keeps its GGUF cache.)"""
    offenders = {str(p.relative_to(SRC)): w for pkg in ("rotation", "learn", "quant", "eval", "stages", "kernels")
                 for p in sorted((SRC / pkg).rglob("*.py")) if (w := _file_writes(p))}
    assert not offenders, offenders

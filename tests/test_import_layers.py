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

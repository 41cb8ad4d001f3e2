"""One config style for jobs: every config a verb or a command takes is a StrictModel (unknown keys
refused, validated on assignment). Frozen dataclasses are internal value objects, each listed here
with why, so a new one is classified on purpose rather than becoming a second config style."""

import ast
from pathlib import Path

import pytest

import rotaquant
from rotaquant.config import EvalConfig, RotateConfig, StrictModel
from rotaquant.eval.analyze import AnalyzeConfig
from rotaquant.learn.config import OptimizeConfig

SRC = Path(rotaquant.__file__).resolve().parent

# frozen dataclasses that are values, not job configs (none is read from YAML or flags)
VALUE_OBJECTS = {
    "GPTQConfig": "arguments of gptq_quantize_weight, built from the recipe's gptq_* keys",
    "QuantSpec": "a quantizer grid, built from the recipe; hashed and read in the hot path",
    "Plan": "a Triton launch plan",
    "_Setup": "the constants of one kind of Hadamard launch, cached for the process (its identity keys the compiled kernel)",
    "_Ready": "a plain Hadamard launch kept after its first direct launch, repeated by the fast path (kernel entry, constants)",
    "ModelAlias": "a row of the table of model short names",
    "ModelSource": "a resolved model location",
    "Gap": "one finding of the rotation structure check",
    "ModelEntry": "a registry entry (class name -> RotationSpec)",
    "Row": "one row of the layer-wise report",
    "Score": "one log-likelihood result",
    "Doc": "one item of a zero-shot task",
    "TaskSpec": "a row of the table of zero-shot tasks",
}


def _frozen_dataclasses() -> dict[str, str]:
    found = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "id", "") == "dataclass"
                and any(k.arg == "frozen" and getattr(k.value, "value", False) for k in d.keywords)
                for d in node.decorator_list):
                found[node.name] = str(path.relative_to(SRC))
    return found


@pytest.mark.parametrize("cls", [c for c in (getattr(rotaquant, n) for n in rotaquant.__all__)
                                 if isinstance(c, type) and (c.__name__.endswith(("Config", "Recipe")))]
                         + [EvalConfig, RotateConfig, OptimizeConfig, AnalyzeConfig], ids=lambda c: c.__name__)
def test_job_configs_are_strict_models(cls):
    assert issubclass(cls, StrictModel)


def test_public_configs_are_found():
    names = {n for n in rotaquant.__all__ if n.endswith(("Config", "Recipe"))}
    assert {"ModelConfig", "RotationConfig", "QuantConfig", "OutputConfig", "PTQRecipe"} <= names


def test_every_frozen_dataclass_is_a_listed_value_object():
    found = _frozen_dataclasses()
    assert "GPTQConfig" in found and "QuantSpec" in found  # the scan sees them
    unlisted = {name: where for name, where in found.items() if name not in VALUE_OBJECTS}
    assert not unlisted, (f"{unlisted}: a job config is a StrictModel (rotaquant.config); a value object goes in "
                          "VALUE_OBJECTS with why")

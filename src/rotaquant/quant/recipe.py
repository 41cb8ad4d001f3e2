"""The PTQ recipe: one validated config for ``rotaquant.quantize`` and ``rotaquant ptq``.

Field names follow SpinQuant/QuaRot's flags (``w_bits``, ``a_bits``, ``k_bits``, ...), so a
YAML recipe and the CLI mean the same thing: ``--w-bits 4`` is ``w_bits: 4``.

Presets (``preset: quarot`` / ``--preset quarot``) fill in each paper's W4A4KV4 recipe; keys given
explicitly (YAML, flags or keyword arguments) override a preset. ``preset: auto`` (the default)
is the strongest recipe we measured when anything is quantized below 16 bits: ``spinquant``
with GPTQv2 (GPTAQ) weights; nothing otherwise. ``none`` keeps the plain per-key defaults (RTN,
symmetric, no clipping).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import (
    CalibrationConfig,
    EvaluateConfig,
    ModelConfig,
    OutputConfig,
    RotationConfig,
    StrictModel,
)
from .quantizer import QuantSpec


def _bits(value: int) -> int:
    if value != 16 and not 2 <= value <= 8:
        raise ValueError(f"bits must be in 2..8, or 16 for no quantization; got {value}")
    return value


class QuantSettings(StrictModel):
    """The fake quantizers of weights, activations (per token) and the KV cache.

    Shared by :class:`PTQRecipe` and the rotation-learning config, so both read the same keys.
    """

    w_bits: int = 16
    w_groupsize: int | None = Field(None, ge=1)
    w_asym: bool = False
    # activations (per-token dynamic)
    a_bits: int = 16
    a_groupsize: int | None = Field(None, ge=1)
    a_asym: bool = False
    a_clip_ratio: float = Field(1.0, gt=0, le=1)
    skip_modules: list[str] = Field(default_factory=lambda: ["*lm_head"])
    # KV cache
    k_bits: int = 16
    k_groupsize: int | None = Field(None, ge=1)
    k_asym: bool = False
    k_clip_ratio: float = Field(1.0, gt=0, le=1)
    v_bits: int = 16
    v_groupsize: int | None = Field(None, ge=1)
    v_asym: bool = False
    v_clip_ratio: float = Field(1.0, gt=0, le=1)
    # o_proj input: per token, per token and head (SpinQuant), or heads mixed online first (QuaRot)
    o_proj_input: Literal["per_token", "per_head", "mixed"] = "per_token"
    # number type of weights / activations: int grids, or float = FP8 e4m3 (8 bits, symmetric)
    w_type: Literal["int", "float"] = "int"
    a_type: Literal["int", "float"] = "int"
    # scale of the symmetric grids: restricted = amax / (2^(b-1) - 1) (QuaRot's), full =
    # amax / ((2^b - 1) / 2) (compressed-tensors'); sym_grid for all, w_/a_/k_/v_ to override one
    sym_grid: Literal["restricted", "full"] = "restricted"
    w_sym_grid: Literal["restricted", "full"] | None = None
    a_sym_grid: Literal["restricted", "full"] | None = None
    k_sym_grid: Literal["restricted", "full"] | None = None
    v_sym_grid: Literal["restricted", "full"] | None = None

    @field_validator("w_bits", "a_bits", "k_bits", "v_bits")
    @classmethod
    def _check_bits(cls, value: int) -> int:
        return _bits(value)

    @model_validator(mode="after")
    def _fp8_is_8_bits(self):
        for what in ("w", "a"):
            bits = getattr(self, f"{what}_bits")
            if getattr(self, f"{what}_type") == "float" and (bits != 8 or getattr(self, f"{what}_asym")):
                raise ValueError(f"{what}_type 'float' is FP8 e4m3: set {what}_bits 8 and leave {what}_asym off "
                                 f"(got {what}_bits {bits})")
        return self

    # -- the quantizer specs ------------------------------------------------------------------
    def grid_of(self, what: str) -> str:
        """The symmetric grid of ``what`` (``w``, ``a``, ``k`` or ``v``): its own key, else ``sym_grid``."""
        return getattr(self, f"{what}_sym_grid") or self.sym_grid

    @property
    def weight_spec(self) -> QuantSpec:
        return QuantSpec(type=self.w_type, bits=self.w_bits, symmetric=not self.w_asym, group_size=self.w_groupsize,
                         sym_grid=self.grid_of("w"))

    @property
    def act_spec(self) -> QuantSpec:
        return QuantSpec(type=self.a_type, bits=self.a_bits, symmetric=not self.a_asym, group_size=self.a_groupsize,
                         clip_ratio=self.a_clip_ratio, sym_grid=self.grid_of("a"))

    @property
    def key_spec(self) -> QuantSpec:
        return QuantSpec(bits=self.k_bits, symmetric=not self.k_asym, group_size=self.k_groupsize,
                         clip_ratio=self.k_clip_ratio, sym_grid=self.grid_of("k"))

    @property
    def value_spec(self) -> QuantSpec:
        return QuantSpec(bits=self.v_bits, symmetric=not self.v_asym, group_size=self.v_groupsize,
                         clip_ratio=self.v_clip_ratio, sym_grid=self.grid_of("v"))

    def bits_label(self) -> str:
        """``W4A4KV4``-style name of the bit widths ('' when nothing is quantized)."""
        kv = "" if self.k_bits == self.v_bits == 16 else (
            f"KV{self.k_bits}" if self.k_bits == self.v_bits else f"K{self.k_bits}V{self.v_bits}")
        if self.w_bits == self.a_bits == 16 and not kv:
            return ""
        fp8 = "-FP8" if "float" in (self.w_type, self.a_type) else ""
        return f"W{self.w_bits}A{self.a_bits}{kv}{fp8}"


# QuaRot's clipping of activations (0.9) and K/V (0.95)
CLIP = {"a_clip_ratio": 0.9, "k_clip_ratio": 0.95, "v_clip_ratio": 0.95}
PRESETS: dict[str, dict[str, Any]] = {
    # QuaRot: GPTQ with clipping search, symmetric activations clipped at 0.9, heads mixed by an
    # online Hadamard before o_proj, asymmetric KV per head clipped at 0.95, random R1, exact R2
    "quarot": {"w_method": "gptq", "w_clip": True, "a_asym": False, "o_proj_input": "mixed", "k_asym": True,
               "v_asym": True, **CLIP, "rotation_mode": {"r1": "hadamard", "r2": "base_hadamard"}},
    # SpinQuant: GPTQ with clipping search, asymmetric activations, o_proj input per head,
    # asymmetric KV per head; R1/R2 random Hadamard or learned (rotation_path)
    "spinquant": {"w_method": "gptq", "w_clip": True, "a_asym": True, "o_proj_input": "per_head",
                  "k_asym": True, "v_asym": True},
}
# the default for quantized settings: SpinQuant's recipe with GPTQv2 weights and QuaRot's clipping
# of activations (0.9) and K/V (0.95), the best on our model (smollm2-135m W4A4KV4, full test:
# H100 40.53 random / 39.89 learned vs 46.31 / 44.88 with GPTQ; clipping, H200, random Hadamard
# seeds 0/1/2: 38.25 / 38.61 / 38.55 vs 40.53 / 40.84 / 40.68 without; with rotations learned
# without clipping it changed nothing: 39.72 vs 39.68, mean of 3)
AUTO = {**PRESETS["spinquant"], "gptq_v2": True, **CLIP}
PRESET_NAMES = ("auto", "none", *PRESETS)


def apply_preset(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its preset's values filled in under the keys it does not set itself."""
    name = data.get("preset", "auto")
    values = PRESETS.get(name, {})
    if name == "auto":
        bits = (data.get(k, 16) for k in ("w_bits", "a_bits", "k_bits", "v_bits"))
        quantized = any(isinstance(b, int) and b < 16 for b in bits)
        values = AUTO if quantized else {}
    if not values:
        return data
    return {**values, **data, "preset": data.get("preset", "auto")}


class QuantConfig(QuantSettings):
    """How :func:`rotaquant.quantize` quantizes (recipe section ``quant``): the quantizers of
    :class:`QuantSettings`, the weight method (RTN or GPTQ) and SmoothQuant, and a paper preset."""

    preset: Literal["auto", "none", "quarot", "spinquant"] = "auto"
    # weights
    w_clip: bool = False
    w_method: str = "rtn"
    gptq_damp: float = Field(0.01, ge=0)
    gptq_block_size: int = Field(128, ge=1)
    gptq_act_order: bool = False
    gptq_static_groups: bool = False
    gptq_v2: bool = False  # GPTAQ: the quantized layer matches the FP layer on FP inputs
    smoothquant_alpha: float | None = Field(None, ge=0, le=1)  # SmoothQuant migration strength (no rotation)

    @field_validator("w_method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in ("rtn", "gptq"):
            raise ValueError(f"w_method must be 'rtn' or 'gptq', not {value!r}")
        return value


class PTQRecipe(OutputConfig, EvaluateConfig, CalibrationConfig, QuantConfig, RotationConfig, ModelConfig):
    """Everything that defines one post-training quantization run: the configs of the verbs it
    runs, as one flat set of keys (each key belongs to exactly one section, see :data:`SECTIONS`).

    It loads flat (``w_bits: 4``, the keys SpinQuant's flags use) or nested by section
    (``quant: {w_bits: 4}``, ``rotation: {...}``, ``model: {model: ..., dtype: ...}``); both
    mean the same recipe, and so does Python (``PTQRecipe(quant=QuantConfig(w_bits=4))``).
    :meth:`section` gives one section's config, :meth:`nested` the nested form.
    """

    version: int = 1

    @model_validator(mode="before")
    @classmethod
    def _cal_seqlen_follows_seqlen(cls, data):
        # a recipe (or flag) that sets seqlen but not cal_seqlen calibrates on windows of seqlen
        if isinstance(data, dict) and data.get("cal_seqlen") is None and data.get("seqlen") is not None:
            data = {**data, "cal_seqlen": data["seqlen"]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return apply_preset(dict(data)) if isinstance(data, dict) else data

    # defined last, so it runs first of the "before" validators: presets see flat keys
    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: Any) -> Any:
        return flatten_sections(data) if isinstance(data, dict) else data

    @classmethod
    def normalize(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The flat form of ``data`` (see :meth:`StrictModel.load`: overrides then replace its keys)."""
        return flatten_sections(data)

    def section(self, name: str) -> StrictModel:
        """The config of one section (``model``, ``rotation``, ``quant``, ``calibration``,
        ``eval``, ``output``) with this recipe's values."""
        cls = SECTIONS[name]
        return cls(**{k: getattr(self, k) for k in cls.model_fields})

    def nested(self) -> dict[str, Any]:
        """The recipe as ``{"version", "model": {...}, "rotation": {...}, ...}`` (JSON-safe)."""
        flat = self.to_dict()
        out: dict[str, Any] = {"version": flat.pop("version")}
        for key, value in flat.items():
            out.setdefault(section_of(key), {})[key] = value
        return {"version": out["version"], **{name: out.get(name, {}) for name in SECTIONS}}

    @model_validator(mode="after")
    def _consistent(self) -> PTQRecipe:
        if self.rotation_path and not self.rotate:
            raise ValueError("rotation_path is given but rotate is false")
        if self.smoothquant_alpha is not None and self.rotate:
            raise ValueError("smoothquant_alpha is a processing method of its own: set rotate to false (a rotation's "
                             "norm folding would undo SmoothQuant's scales)")
        if self.o_proj_input == "mixed" and not (self.rotate and self.online_rotations):
            raise ValueError("o_proj_input 'mixed' is an online rotation: it needs rotate and online_rotations")
        return self

    def label(self) -> str:
        """Short name of the setting, e.g. ``W4A4KV4 GPTQ rotated``."""
        bits = self.bits_label()
        if not bits:
            return "FP (no quantization)"
        method = f" {self.w_method.upper()}" if self.w_bits < 16 else ""
        if self.rotate:
            rot = " learned rotation" if self.rotation_path else " rotated"
        elif self.smoothquant_alpha is not None:
            rot = f" SmoothQuant a={self.smoothquant_alpha:g}"
        else:
            rot = " no rotation"
        return f"{bits}{method}{rot}"


# the sections of a nested recipe, in order; their keys are the flat recipe's keys
SECTIONS: dict[str, type[StrictModel]] = {
    "model": ModelConfig,
    "rotation": RotationConfig,
    "quant": QuantConfig,
    "calibration": CalibrationConfig,
    "eval": EvaluateConfig,
    "output": OutputConfig,
}


def section_of(key: str) -> str:
    """The section a flat recipe key belongs to (a key only :class:`PTQRecipe` declares: ``quant``)."""
    for name, cls in SECTIONS.items():
        if key in cls.model_fields:
            return name
    return "quant"


def flatten_sections(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict with its sections (``quant: {...}`` or a section config) merged into flat keys.

    ``model`` and ``output`` are both a section and a key: a mapping (or config) is the section,
    a string the key. A key given twice, or in the wrong section, is an error that names it.
    """
    flat: dict[str, Any] = {}
    sections: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, (dict, StrictModel)):
            body = value.model_dump(exclude_unset=True) if isinstance(value, StrictModel) else value
            sections.append((key, body))
        else:
            flat[key] = value
    for name, body in sections:
        for key, value in body.items():
            if key not in PTQRecipe.model_fields or key == "version":
                raise ValueError(f"{name}.{key}: unknown key (check the spelling)")
            if section_of(key) != name:
                raise ValueError(f"{name}.{key}: {key!r} belongs to section {section_of(key)!r}")
            if key in flat:
                raise ValueError(f"{key!r} is given twice (flat and in section {name!r}); give it once")
            flat[key] = value
    return flat

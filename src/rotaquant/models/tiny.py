"""Tiny random instances of transformers model classes, for checks that need a real forward."""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
            tie_word_embeddings=False)
# sizes that a class needs on top of TINY to build at all (its own config keys)
TINY_OVERRIDES = {
    "Mamba2ForCausalLM": dict(num_heads=8, head_dim=16, expand=2, n_groups=1, state_size=16, conv_kernel=4,
                              chunk_size=16),
    "BambaForCausalLM": dict(attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=1,
                             mamba_d_state=16, mamba_expand=2, mamba_chunk_size=16),
    "NemotronHForCausalLM": dict(num_hidden_layers=4, layers_block_type=["mamba", "attention", "mamba", "mlp"],
                                 mamba_num_heads=8, mamba_head_dim=16, n_groups=1, ssm_state_size=16, expand=2,
                                 chunk_size=16),
}


def tiny_instance(class_name: str, seed: int = 0, dtype=torch.float64) -> nn.Module | None:
    """A tiny random float64 instance of transformers' ``class_name`` in eval mode, with its
    norm weights perturbed (so that folding them matters); None when transformers lacks it."""
    import transformers

    cls = getattr(transformers, class_name, None)
    config_class = getattr(cls, "config_class", None)
    if cls is None or config_class is None:
        return None
    try:
        config = config_class(**{**TINY, **TINY_OVERRIDES.get(class_name, {})})
        torch.manual_seed(seed)
        model = cls(config).to(dtype).eval()
    except Exception as exc:  # a class that cannot be built from these sizes: no check possible
        logger.debug("cannot build a tiny %s: %s", class_name, exc)
        return None
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model

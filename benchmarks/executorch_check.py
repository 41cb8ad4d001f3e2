"""ExecuTorch feasibility check: a rotated rotaquant model through ExecuTorch's XNNPACK backend.

A tiny LLaMA (tests' ``tiny_model``) is rotated in place by ``rotaquant.rotate`` (R1/R2 fused in
float64, R3 on queries/keys and R4 on the down_proj input as online stages), its decoder linears
get torchao's 8-bit-dynamic-activation / int4-groupwise-weight config (the SpinQuant mobile
recipe's ``8da4w``), and the model is exported (``torch.export``), lowered to XNNPACK, serialized
and run by ExecuTorch's Python runtime; its logits are compared with PyTorch's eager logits of the
same model. Findings and the exact versions: ``benchmarks/results/executorch.md``.

ExecuTorch is not a dependency of rotaquant: install it beside the project venv, without
touching its torch (the executorch 1.5.1 wheel declares no torch requirement; torchao 0.18's
C++ extensions want torch >= 2.11)::

    pip download --no-deps -d /tmp/et executorch==1.5.1 torchao==0.18.0 flatbuffers ruamel.yaml \\
        ruamel.yaml.clib tabulate
    pip install --no-index --no-deps --target /tmp/etsite /tmp/et/*.whl
    PYTHONPATH=/tmp/etsite:src python benchmarks/executorch_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.conftest


def main() -> int:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime
    from executorch.version import __version__ as et_version
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    import rotaquant
    from tests.conftest import tiny_model

    model = tiny_model("llama", seed=0, hidden_size=128, intermediate_size=256, head_dim=32)
    rotaquant.rotate(model, progress=False)
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))
    quantize_(model, config, filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and "lm_head" not in name)

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids, use_cache=False).logits

    wrapped = Logits(model).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = wrapped(ids)
        program = to_edge_transform_and_lower(torch.export.export(wrapped, (ids,)),
                                              partitioner=[XnnpackPartitioner()]).to_executorch()
    out = Runtime.get().load_program(program.buffer).load_method("forward").execute([ids])[0]
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"torch {torch.__version__}, executorch {et_version}: .pte {len(program.buffer)} bytes, "
          f"max |ET - eager| / max |eager| = {rel:.4g}, next-token argmax agreement {agree:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

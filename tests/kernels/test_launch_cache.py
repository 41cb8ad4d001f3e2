"""The compiled-kernel cache of the Hadamard launcher: a call kind compiles once and is then
launched directly; anything Triton specialises on (order, dtype, mode, grid, alignment) gets its
own entry. Checked with a stand-in kernel on CPU tensors (the real launches run on the GPU)."""

from __future__ import annotations

import pytest
import torch

from rotaquant.quant.quantizer import QuantSpec
from tests.kernels.triton_env import TRITON_MARKS

pytestmark = TRITON_MARKS


class _Kernel:
    packed_metadata = function = None

    def __init__(self, log):
        self.log = log

    def run(self, *args):
        self.log.append("run")


class _Jit:
    """Counts the JIT path (the first call of a kind) and the direct launches after it."""

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def compile_and_launch(*args, num_warps):
            self.log.append("jit")
            return _Kernel(self.log)

        return compile_and_launch


@pytest.fixture
def jit(monkeypatch):
    import rotaquant.kernels.hadamard_triton as ht

    fake = _Jit()
    monkeypatch.setattr(ht, "_INTERPRET", False)
    monkeypatch.setattr(ht, "_raw_stream", lambda index: 0)
    monkeypatch.setattr(ht, "_hadamard_kernel", fake)
    monkeypatch.setattr(ht, "_COMPILED", {})
    return ht, fake


def test_one_compilation_per_call_kind(jit):
    ht, fake = jit
    x = torch.randn(16, 256, dtype=torch.float16)
    for _ in range(3):
        ht.transform(x, True)
    assert fake.log == ["jit", "run", "run"]
    ht.transform(torch.randn(5, 256, dtype=torch.float16), True)  # other rows: same kernel
    assert fake.log[-1] == "run"
    spec = QuantSpec(bits=4, symmetric=False)
    for other in (lambda: ht.transform(torch.randn(16, 1536, dtype=torch.float16), True),  # order
                  lambda: ht.transform(x.float(), True),  # dtype
                  lambda: ht.transform(x.bfloat16(), True),
                  lambda: ht._rowwise(x, True, False, 2, spec),  # fused fake quant
                  lambda: ht.launch(x, True, False, 1, spec),  # fused codes + scales
                  lambda: ht._rowwise(x, True, False, 2, QuantSpec(bits=8))):  # another grid
        before = fake.log.count("jit")
        other()
        other()
        assert fake.log.count("jit") == before + 1 and fake.log[-1] == "run"


def test_misaligned_inputs_compile_their_own_kernel(jit):
    ht, fake = jit
    base = torch.randn(16 * 256 + 1, dtype=torch.float16)
    ht.transform(base[:16 * 256].view(16, 256), True)
    ht.transform(base[1:].view(16, 256), True)  # 2-byte offset: not 16-byte aligned
    assert fake.log == ["jit", "jit"]
    ht.transform(base[1:].view(16, 256), True)
    assert fake.log == ["jit", "jit", "run"]

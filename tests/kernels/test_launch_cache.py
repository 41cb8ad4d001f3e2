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

    def __init__(self, log, args):
        self.log, self.args = log, args

    def run(self, *args):
        self.log.append("run")
        self.args.append(args)


class _Jit:
    """Counts the JIT path (the first call of a kind) and the direct launches after it."""

    def __init__(self):
        self.log, self.args = [], []

    def __getitem__(self, grid):
        def compile_and_launch(*args, num_warps):
            self.log.append("jit")
            return _Kernel(self.log, self.args)

        return compile_and_launch


@pytest.fixture
def jit(monkeypatch):
    import rotaquant.kernels.hadamard_triton as ht

    fake = _Jit()
    monkeypatch.setattr(ht, "_INTERPRET", False)
    monkeypatch.setattr(ht, "_raw_stream", lambda index: 0)
    monkeypatch.setattr(ht, "_hadamard_kernel", fake)
    monkeypatch.setattr(ht, "_COMPILED", {})
    monkeypatch.setattr(ht, "_READY", {})
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


def _same_launch(a: tuple, b: tuple) -> bool:
    """Two recorded launches with the same grid and constants, and tensors of the same size and dtype
    where the other has one (the kernel takes pointers: a [2, 8, n] input is its 16 rows)."""
    return len(a) == len(b) and all(
        (isinstance(v, torch.Tensor) and u.numel() == v.numel() and u.dtype == v.dtype)
        if isinstance(u, torch.Tensor) else u == v
        for u, v in zip(a, b, strict=True))


def test_fast_path_repeats_the_full_launch(jit, monkeypatch):
    """After a call kind's first direct launch, fast_transform launches the same kernel with the
    same grid and arguments (input, a fresh output, the core operand, constants) and returns an
    output shaped like the input; anything it does not cover goes back to the full path."""
    ht, fake = jit
    for n in (4096, 1536):  # Sylvester only; core + Sylvester (the core operand is passed)
        x = torch.randn(2, 8, n, dtype=torch.float16)
        assert ht.fast_transform(x, True) is None  # nothing launched yet
        ht.transform(x, True)  # JIT
        assert ht.fast_transform(x, True) is None  # the JIT launch does not register
        ht.transform(x, True)  # first direct launch registers the kind
        full = fake.args[-1]
        y = ht.fast_transform(x, True)
        assert y is not None and y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
        fast = fake.args[-1]
        assert _same_launch(full, fast) and fast[9] is x and fast[10] is y
        # the core operand, or without a core the input standing in for it (no tensor kept alive)
        assert fast[11] is (x if n == 4096 else full[11])
        assert ht.fast_transform(x, False) is None and ht.fast_transform(x.float(), True) is None
        assert ht.fast_transform(torch.randn(0, n, dtype=torch.float16), True) is None
        base = torch.randn(8 * n + 1, dtype=torch.float16)
        assert ht.fast_transform(base[1:].view(8, n), True) is None  # not 16-byte aligned
    monkeypatch.setattr(ht, "_launch_hooked", lambda: True)  # a profiler's hooks: the JIT path
    assert ht.fast_transform(x, True) is None


def test_public_fast_path_conditions(jit, monkeypatch):
    """hadamard_transform's shortcut runs only where the full path would pick the same kernel."""
    from rotaquant.rotation import transform as tr

    ht, fake = jit
    x = torch.randn(16, 256, dtype=torch.float16)
    ht.transform(x, True)
    ht.transform(x, True)
    runs = fake.log.count("run")
    assert tr._fast_kernel(x, True) is not None and fake.log.count("run") == runs + 1
    assert tr._fast_kernel(x.t(), True) is None  # not contiguous (x.t() is 256 x 16, other order anyway)
    assert tr._fast_kernel(x.clone().requires_grad_(), True) is None  # autograd takes the full path
    with torch.no_grad():
        assert tr._fast_kernel(x.clone().requires_grad_(), True) is not None
    monkeypatch.setenv("ROTAQUANT_HADAMARD_BACKEND", "reference")
    assert tr._fast_kernel(x, True) is None

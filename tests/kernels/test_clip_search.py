"""Triton clipping search (:mod:`rotaquant.kernels.clip_search`) against the torch search of
:func:`rotaquant.quant.rtn.search_clip_params` on the same device: the same candidate grids bit for
bit, so the same choice except where two candidates' errors tie to summation-order rounding, and
never a worse one. Run on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``)."""

import pytest
import torch

from rotaquant.quant.quantizer import QuantSpec, quantize_dequantize
from rotaquant.quant.rtn import search_clip_params, shrink_factors

from .triton_env import DEVICE, INTERPRET, TRITON_MARKS

pytestmark = TRITON_MARKS

SPECS = {
    "int4 sym": QuantSpec(bits=4),
    "int4 sym full grid": QuantSpec(bits=4, sym_grid="full"),
    "int4 asym": QuantSpec(bits=4, symmetric=False),
    "int3 asym clip 0.9": QuantSpec(bits=3, symmetric=False, clip_ratio=0.9),
    "int8 sym": QuantSpec(bits=8),
}
SHAPES = {"rows 576": (48, 576), "rows 5000 (two chunks)": (6, 5000), "groups of 64": (40 * 9, 64)}


def _error(x, scale, zero, spec, norm):
    return (quantize_dequantize(x, scale, zero, spec) - x).abs().pow(norm).sum(-1, keepdim=True)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(SPECS))
def test_kernel_choice_is_the_torch_search(name, shape):
    from rotaquant.kernels.clip_search import search_clip_rows

    spec, (rows, n) = SPECS[name], SHAPES[shape]
    g = torch.Generator().manual_seed(rows + n)
    x = (torch.randn(rows, n, generator=g) * torch.rand(rows, 1, generator=g) * 3).to(DEVICE)
    x[0, 0] = 40.0  # an outlier
    if rows > 2:
        x[1] = x[1].abs()  # a row of one sign
    grid, shrink, norm = 20 if INTERPRET else 100, 0.8, 2.4
    ref_s, ref_z = search_clip_params(x, spec, grid, shrink, norm)
    got_s, got_z = search_clip_rows(x.contiguous(), spec, shrink_factors(grid, shrink), norm)
    got_s, got_z = got_s[:, None], got_z[:, None]
    same = (got_s == ref_s) & (got_z == ref_z)
    assert same.float().mean().item() >= 0.95, f"{(~same).sum().item()} of {rows} rows chose another range"
    # where the choice differs, it is as good (to float rounding of the sums)
    ref_err, got_err = _error(x, ref_s, ref_z, spec, norm), _error(x, got_s, got_z, spec, norm)
    assert (got_err <= ref_err * (1 + 1e-4) + 1e-12).all()
    if spec.bits < 8:  # a search that chose something: most rows' best range is a clipped one
        plain, _ = search_clip_params(x, spec, grid=1)  # the one candidate p = 1: plain RTN
        assert (got_s < plain * 0.999).float().mean().item() > 0.5


def test_search_uses_the_kernel_when_asked(monkeypatch):
    """``ROTAQUANT_CLIP_KERNEL=1`` routes float32 CUDA weights to the kernel (same results as above);
    float64 keeps the torch search."""
    if DEVICE != "cuda":
        pytest.skip("the dispatch needs CUDA tensors")
    from rotaquant.quant import rtn

    x = torch.randn(32, 576, device="cuda")
    monkeypatch.setenv(rtn.CLIP_KERNEL_ENV, "1")
    assert rtn._kernel_applies(x, SPECS["int4 sym"]) and not rtn._kernel_applies(x.double(), SPECS["int4 sym"])
    s, z = search_clip_params(x, SPECS["int4 asym"])
    assert s.shape == (32, 1) and z.shape == (32, 1)

"""Learned rotations (SpinQuant): Cayley optimization of R1/R2 through fake-quantized forwards."""

from .api import learn_rotations
from .cayley import CayleyAdam, CayleySGD, orthogonality_error
from .config import OptimizeConfig

__all__ = ["CayleyAdam", "CayleySGD", "OptimizeConfig", "learn_rotations", "orthogonality_error"]

"""Learned rotations (SpinQuant): Cayley optimization of R1/R2 through fake-quantized forwards."""

from .cayley import CayleyAdam, CayleySGD, orthogonality_error
from .config import OptimizeConfig
from .job import optimize

__all__ = ["CayleyAdam", "CayleySGD", "OptimizeConfig", "optimize", "orthogonality_error"]

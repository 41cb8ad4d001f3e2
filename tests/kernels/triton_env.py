"""Where the Triton kernel tests can run: on CUDA with Triton, or on CPU under Triton's
interpreter (``TRITON_INTERPRET=1`` with Triton installed). Every kernel test module takes its
markers from here (``pytestmark = TRITON_MARKS``), so they skip for the same reason."""

from __future__ import annotations

import importlib.util
import os

import pytest

import rotaquant.kernels as kernels

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None
ON_GPU = kernels.triton_available()
DEVICE = "cuda" if ON_GPU else "cpu"
TRITON_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (ON_GPU or INTERPRET), reason="needs CUDA and Triton (or TRITON_INTERPRET=1)"),
]

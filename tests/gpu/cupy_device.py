"""CuPy for the GPU tests, or a clean module-level skip where CuPy or a CUDA device is missing."""

from __future__ import annotations

from typing import Any

import pytest


def cupy_or_skip() -> Any:
    """The cupy module; skips the calling test module when CuPy is not installed or sees no GPU."""
    cp: Any = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("CuPy sees no GPU", allow_module_level=True)
    except cp.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"no usable CUDA device: {exc}", allow_module_level=True)
    return cp

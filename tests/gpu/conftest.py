"""Fixtures of the GPU tests: a real NvmlBackend, or a clean skip where there is no driver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vgpud._private.backend.base import BackendError
from vgpud._private.backend.nvml import NvmlBackend


@pytest.fixture
def nvml_backend() -> Iterator[NvmlBackend]:
    """NvmlBackend over the installed driver; skips the test when NVML cannot start."""
    try:
        nvml = NvmlBackend()
    except BackendError as exc:
        pytest.skip(f"no NVML here: {exc}")
    try:
        yield nvml
    finally:
        nvml.close()

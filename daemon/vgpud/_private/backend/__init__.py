"""GPU backends: `sim` (simulated GPUs from a spec) and `nvml` (real GPUs through pynvml)."""

from __future__ import annotations

from vgpud._private.backend.base import BackendError, DiscoveredGpu, GpuBackend
from vgpud._private.backend.nvml import NvmlBackend
from vgpud._private.backend.sim import SimBackend

__all__ = ["BackendError", "DiscoveredGpu", "GpuBackend", "NvmlBackend", "SimBackend", "make_backend"]


def make_backend(kind: str, sim_spec: str | None, node_name: str) -> GpuBackend:
    """The backend the config asks for; BackendError when it cannot start."""
    if kind == "sim":
        if sim_spec is None:
            raise BackendError('the sim backend needs a GPU spec: --sim SPEC, e.g. "h100-80gb:2" ("" for none)')
        return SimBackend(sim_spec, node_name)
    if kind == "nvml":
        return NvmlBackend()
    raise BackendError(f"unknown backend {kind!r}; choose nvml or sim")

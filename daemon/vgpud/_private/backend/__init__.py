"""GPU backends: `sim` (simulated GPUs from a spec) and `nvml` (real GPUs through pynvml)."""

from __future__ import annotations

from pathlib import Path

from vgpud._private.backend.base import BackendError, DiscoveredGpu, GpuBackend, MigInstance, MigMode, MigProfileInfo
from vgpud._private.backend.nvml import NvmlBackend
from vgpud._private.backend.sim import SimBackend

__all__ = [
    "SIM_STATE_FILE",
    "BackendError",
    "DiscoveredGpu",
    "GpuBackend",
    "MigInstance",
    "MigMode",
    "MigProfileInfo",
    "NvmlBackend",
    "SimBackend",
    "make_backend",
]

SIM_STATE_FILE = "sim-gpus.json"
"""Name of the sim backend's MIG state file inside the daemon's state directory."""


def make_backend(kind: str, sim_spec: str | None, node_name: str, state_dir: Path | None = None) -> GpuBackend:
    """The backend the config asks for; BackendError when it cannot start.

    With `state_dir`, the sim keeps its MIG state in `state_dir / SIM_STATE_FILE` across restarts; a real
    GPU keeps its own, so the nvml backend ignores it.
    """
    if kind == "sim":
        if sim_spec is None:
            raise BackendError('the sim backend needs a GPU spec: --sim SPEC, e.g. "h100-80gb:2" ("" for none)')
        return SimBackend(sim_spec, node_name, state_path=None if state_dir is None else state_dir / SIM_STATE_FILE)
    if kind == "nvml":
        return NvmlBackend()
    raise BackendError(f"unknown backend {kind!r}; choose nvml or sim")

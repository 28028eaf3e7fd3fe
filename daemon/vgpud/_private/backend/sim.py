"""Simulated GPUs from a spec such as "h100-80gb:2,a100-40gb:1".

`SimBackend` is `NvmlBackend` running over `SimNvml`, a stand-in for the pynvml calls vgpud makes, with
NVML's error behaviour (NOT_FOUND, GPU_IS_LOST, NOT_SUPPORTED, UNINITIALIZED, and MIG's IN_USE,
INSUFFICIENT_RESOURCES, NO_PERMISSION, RESET_REQUIRED). The daemon, CI and the demo therefore go through
the same discovery, health and MIG code as a real host. UUIDs are uuid5 of (node name, index, model), so a
restarted daemon, or two daemons given the same node name, see the same GPUs; with a state file their MIG
mode and instances survive the restart too.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Collection
from pathlib import Path

from vgpud._private.backend import geometry, sim_state
from vgpud._private.backend.base import BackendError, DeviceUse, ProcessGpuUse
from vgpud._private.backend.nvml import NvmlBackend
from vgpud._private.backend.sim_devices import SimGpu
from vgpud._private.backend.sim_nvml import SimNvml
from vgpud._private.backend.sim_structs import SimNvmlError

__all__ = ["MAX_COUNT", "SimBackend", "SimGpu", "SimNvml", "SimNvmlError", "parse_spec", "sim_uuid"]

MAX_COUNT = 64
"""Most GPUs one spec entry may ask for."""

_UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "https://vgpu.dev/sim-gpu")
_SPEC_HELP = 'expected MODEL[:COUNT][,MODEL[:COUNT]...] such as "h100-80gb:2,a100-40gb:1", or "" for no GPUs'


def parse_spec(spec: str) -> list[tuple[geometry.GpuModel, int]]:
    """(model, count) per entry of a sim spec; BackendError says what is accepted."""
    if not spec.strip():
        return []
    entries: list[tuple[geometry.GpuModel, int]] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise BackendError(f"bad sim spec {spec!r}: empty entry; {_SPEC_HELP}")
        key, sep, count_text = item.partition(":")
        try:
            model = geometry.lookup_model(key)
        except geometry.UnknownModelError as exc:
            raise BackendError(f"bad sim spec {spec!r}: {exc}") from None
        count_text = count_text.strip() if sep else "1"
        if not (count_text.isascii() and count_text.isdigit() and 1 <= int(count_text) <= MAX_COUNT):
            raise BackendError(
                f"bad sim spec {spec!r}: count {count_text!r} for {model.key} "
                f"must be a whole number from 1 to {MAX_COUNT}; {_SPEC_HELP}"
            )
        entries.append((model, int(count_text)))
    return entries


def sim_uuid(node_name: str, index: int, model_key: str) -> str:
    """NVIDIA-format UUID ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx") fixed by node, index and model."""
    return f"GPU-{uuidlib.uuid5(_UUID_NAMESPACE, f'{node_name}/{index}/{model_key}')}"


class SimBackend(NvmlBackend):
    """Simulated GPUs behind the nvml backend's own discovery, health and MIG code."""

    def __init__(self, spec: str, node_name: str, *, state_path: Path | None = None) -> None:
        """Build the GPUs of `spec` for `node_name`; BackendError for a bad spec or a corrupted state file.

        With `state_path`, MIG mode and instances are loaded from it and saved to it after every change.
        """
        gpus: list[SimGpu] = []
        for model, count in parse_spec(spec):
            for _ in range(count):
                index = len(gpus)
                gpus.append(SimGpu(index=index, uuid=sim_uuid(node_name, index, model.key), model=model))
        self.sim = SimNvml(gpus)
        self.state_path = state_path
        if state_path is not None:
            sim_state.load(state_path, gpus)
            self.sim.on_change = lambda: sim_state.save(state_path, gpus)
        super().__init__(self.sim, name="sim")

    def processes(self, gpu_uuids: Collection[str]) -> list[ProcessGpuUse] | None:  # noqa: ARG002 -- the backend interface
        """None: simulated GPUs run no processes, so the watchdog goes by what the runtimes report."""
        self._check_open()
        return None

    def device_use(self, gpu_uuids: Collection[str]) -> dict[str, DeviceUse]:  # noqa: ARG002 -- the backend interface
        """Empty: a simulated GPU's use is what the runtimes of its leases report, not a device reading."""
        self._check_open()
        return {}

    def set_healthy(self, uuid: str, ok: bool) -> None:
        """Mark a simulated GPU lost (ok=False) or back (ok=True); BackendError for an unknown UUID."""
        for gpu in self.sim.gpus:
            if gpu.uuid == uuid:
                gpu.lost = not ok
                return
        raise BackendError(f"GPU {uuid} not found on this host (NVML: Not Found)")

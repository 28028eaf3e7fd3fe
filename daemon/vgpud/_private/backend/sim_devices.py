"""Simulated physical GPUs and the discovery half of the simulated NVML (init, count, names, memory, health)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from vgpud._private.backend import geometry
from vgpud._private.backend.nvml_codes import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
)
from vgpud._private.backend.sim_mig import SimMig
from vgpud._private.backend.sim_structs import GpuHandle, SimAttributes, SimMemoryInfo, SimNvmlError


@dataclass(slots=True)
class SimGpu:
    """One simulated physical GPU."""

    index: int
    """NVML index."""
    uuid: str
    """"GPU-..." UUID."""
    model: geometry.GpuModel
    """What it is: memory, SMs, MIG geometry."""
    lost: bool = False
    """True after set_healthy(uuid, False): every query answers GPU_IS_LOST."""
    mig: SimMig = field(init=False)
    """Its MIG mode and instances."""

    def __post_init__(self) -> None:
        """Start with MIG off and nothing on the GPU."""
        self.mig = SimMig(self.model)


class SimNvmlBase:
    """The discovery calls of `NvmlLibrary`, answered from the model table."""

    NVMLError: type[Exception] = SimNvmlError

    def __init__(self, gpus: list[SimGpu]) -> None:
        """Serve these GPUs; calls fail with UNINITIALIZED until nvmlInit."""
        self.gpus = gpus
        self._by_uuid = {g.uuid: g for g in gpus}
        self._initialised = 0
        self._lock = threading.Lock()

    def nvmlInit(self) -> None:  # noqa: N802 -- pynvml's names
        """Reference-counted, as NVML's."""
        with self._lock:
            self._initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802 -- pynvml's names
        """Drop one reference; UNINITIALIZED when there is none."""
        with self._lock:
            if self._initialised == 0:
                raise SimNvmlError(NVML_ERROR_UNINITIALIZED)
            self._initialised -= 1

    def _check(self) -> None:
        if self._initialised == 0:
            raise SimNvmlError(NVML_ERROR_UNINITIALIZED)

    def _gpu_at(self, index: int) -> SimGpu:
        """The GPU at an index of a live handle; GPU_IS_LOST when it fell off the bus."""
        self._check()
        if not 0 <= index < len(self.gpus):
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.lost:
            raise SimNvmlError(NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _gpu(self, handle: object) -> SimGpu:
        if not isinstance(handle, GpuHandle):
            self._check()
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu_at(handle.index)

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 -- pynvml's names
        """Number of simulated GPUs."""
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> GpuHandle:  # noqa: N802 -- pynvml's names
        """INVALID_ARGUMENT outside 0..count-1."""
        self._check()
        if not 0 <= index < len(self.gpus):
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
        return GpuHandle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> object:  # noqa: N802 -- pynvml's names
        """NOT_FOUND for a UUID no simulated GPU has; GPU_IS_LOST for a lost one."""
        self._check()
        gpu = self._by_uuid.get(uuid)
        if gpu is None:
            raise SimNvmlError(NVML_ERROR_NOT_FOUND)
        if gpu.lost:
            raise SimNvmlError(NVML_ERROR_GPU_IS_LOST)
        return GpuHandle(gpu.index)

    def nvmlDeviceGetUUID(self, handle: object) -> str:  # noqa: N802 -- pynvml's names
        """The deterministic sim UUID."""
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: object) -> str:  # noqa: N802 -- pynvml's names
        """The model's NVML product name."""
        return self._gpu(handle).model.product_name

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> SimMemoryInfo:  # noqa: N802 -- pynvml's names
        """An idle GPU: everything free."""
        total = self._gpu(handle).model.memory_bytes
        return SimMemoryInfo(total=total, free=total, used=0)

    def nvmlDeviceGetAttributes(self, handle: object) -> SimAttributes:  # noqa: N802 -- pynvml's names
        """NOT_SUPPORTED before Ampere, as the real call."""
        gpu = self._gpu(handle)
        if gpu.model.architecture == "turing":
            raise SimNvmlError(NVML_ERROR_NOT_SUPPORTED)
        return SimAttributes(multiprocessorCount=gpu.model.sm_count)

    def nvmlDeviceGetMigMode(self, handle: object) -> list[int]:  # noqa: N802 -- pynvml's names
        """[current, pending]; NOT_SUPPORTED on models without MIG."""
        gpu = self._gpu(handle)
        gpu.mig.require_capable()
        return [int(gpu.mig.current), int(gpu.mig.pending)]

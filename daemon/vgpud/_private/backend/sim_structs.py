"""What the simulated NVML hands out and takes in: its error, handles, pynvml's structs, ctypes arguments.

Field names are NVML's, so code written against pynvml reads them unchanged.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from vgpud._private.backend.nvml_codes import NVML_ERROR_INSUFFICIENT_SIZE, NVML_ERROR_INVALID_ARGUMENT, error_text


class SimNvmlError(Exception):
    """What the simulated NVML raises; `.value` is the NVML return code, like pynvml.NVMLError."""

    def __init__(self, value: int) -> None:
        """Wrap an NVML return code."""
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        """The text pynvml would show for this code."""
        return error_text(self.value)


def deref(ref: object) -> Any:
    """What a ctypes `byref(x)` or `pointer(x)` points at; INVALID_ARGUMENT for anything else."""
    target = getattr(ref, "_obj", None)  # ctypes.byref
    if target is None:
        target = getattr(ref, "contents", None)  # ctypes.pointer
    if target is None:
        raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
    return target


def fill(array: Any, values: list[Any], capacity_needed: int) -> None:
    """Write into a caller-sized ctypes array; INSUFFICIENT_SIZE when it is smaller than NVML requires."""
    if array is None:
        raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
    if len(array) < capacity_needed:
        raise SimNvmlError(NVML_ERROR_INSUFFICIENT_SIZE)
    for i, value in enumerate(values):
        array[i] = value


class SimPlacement(ctypes.Structure):
    """nvmlGpuInstancePlacement_t: the ctypes struct pynvml callers build and pass by reference."""

    _fields_ = (("start", ctypes.c_uint), ("size", ctypes.c_uint))


@dataclass(frozen=True, slots=True)
class GpuHandle:
    """nvmlDevice_t of a physical GPU."""

    index: int
    """Index of the simulated GPU."""


@dataclass(frozen=True, slots=True)
class GpuInstanceHandle:
    """nvmlGpuInstance_t; dies (INVALID_ARGUMENT) when its GI is destroyed."""

    index: int
    """Index of the physical GPU."""
    gpu_instance_id: int
    """GI ID."""
    serial: int
    """Which incarnation of that GI ID: a handle of a destroyed GI never reaches a new one."""


@dataclass(frozen=True, slots=True)
class ComputeInstanceHandle:
    """nvmlComputeInstance_t; dies when its CI is destroyed."""

    index: int
    """Index of the physical GPU."""
    gpu_instance_id: int
    """GI ID."""
    compute_instance_id: int
    """CI ID within the GI."""
    serial: int
    """Which incarnation of that CI."""


@dataclass(frozen=True, slots=True)
class MigDeviceHandle:
    """nvmlDevice_t of a MIG device (one per CI); dies when the CI is destroyed."""

    index: int
    """Index of the physical GPU."""
    gpu_instance_id: int
    """GI ID."""
    compute_instance_id: int
    """CI ID within the GI."""
    serial: int
    """Which incarnation of that CI."""


@dataclass(frozen=True, slots=True)
class SimMemoryInfo:
    """nvmlMemory_t: bytes."""

    total: int
    """Memory of the device or MIG instance."""
    free: int
    """Not allocated."""
    used: int
    """Allocated."""


@dataclass(frozen=True, slots=True)
class SimAttributes:
    """The part of nvmlDeviceAttributes_t vgpud reads."""

    multiprocessorCount: int  # noqa: N815 -- NVML's field name
    """SMs of the device."""


@dataclass(frozen=True, slots=True)
class SimGpuInstanceProfileInfo:
    """nvmlGpuInstanceProfileInfo_v2_t, the fields a driver reports that the geometry table has."""

    id: int
    """Profile ID."""
    sliceCount: int  # noqa: N815 -- NVML's field name
    """Compute slices."""
    instanceCount: int  # noqa: N815 -- NVML's field name
    """Most instances at once."""
    multiprocessorCount: int  # noqa: N815 -- NVML's field name
    """SMs of one instance."""
    memorySizeMB: int  # noqa: N815 -- NVML's field name
    """Memory of one instance in MiB."""
    name: str
    """E.g. "MIG 3g.40gb" (pynvml decodes the char array to str)."""


@dataclass(frozen=True, slots=True)
class SimPlacementInfo:
    """A placement inside an info struct: slices."""

    start: int
    """First slice."""
    size: int
    """Number of slices."""


@dataclass(frozen=True, slots=True)
class SimGpuInstanceInfo:
    """nvmlGpuInstanceInfo_t."""

    device: GpuHandle
    """Parent GPU."""
    id: int
    """GI ID."""
    profileId: int  # noqa: N815 -- NVML's field name
    """GI profile ID."""
    placement: SimPlacementInfo
    """Memory slices it occupies."""


@dataclass(frozen=True, slots=True)
class SimComputeInstanceProfileInfo:
    """nvmlComputeInstanceProfileInfo_v2_t, the fields vgpud reads."""

    id: int
    """CI profile ID (equal to its NVML index)."""
    sliceCount: int  # noqa: N815 -- NVML's field name
    """Compute slices."""
    instanceCount: int  # noqa: N815 -- NVML's field name
    """Most CIs of this profile in the GI."""
    multiprocessorCount: int  # noqa: N815 -- NVML's field name
    """SMs of one CI."""
    name: str
    """E.g. "MIG 1c.3g.40gb", or the GI's name for a full-size CI."""


@dataclass(frozen=True, slots=True)
class SimComputeInstanceInfo:
    """nvmlComputeInstanceInfo_t."""

    device: GpuHandle
    """Parent GPU."""
    gpuInstance: GpuInstanceHandle  # noqa: N815 -- NVML's field name
    """Parent GI."""
    id: int
    """CI ID within the GI."""
    profileId: int  # noqa: N815 -- NVML's field name
    """CI profile ID."""
    placement: SimPlacementInfo
    """Compute slices it occupies within the GI."""


@dataclass(frozen=True, slots=True)
class SimProcess:
    """An item of nvmlDeviceGetComputeRunningProcesses."""

    pid: int
    """Host PID."""
    usedGpuMemory: int  # noqa: N815 -- NVML's field name
    """Bytes (the simulator does not track memory: 0)."""
    gpuInstanceId: int  # noqa: N815 -- NVML's field name
    """GI ID, or 0xFFFFFFFF off MIG."""
    computeInstanceId: int  # noqa: N815 -- NVML's field name
    """CI ID, or 0xFFFFFFFF off MIG."""

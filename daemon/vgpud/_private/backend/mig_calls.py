"""pynvml's MIG calls that take ctypes arrays and pointers, as plain Python.

pynvml passes these arguments straight to the C library (no argtypes), so a placement must go by
reference and arrays must be sized by the caller (gpu-slicing.md section 2). The simulator accepts the
same ctypes objects, so this wrapping runs in CI as well as on a GPU.
"""

from __future__ import annotations

import ctypes
from typing import Any

from vgpud._private.backend.nvml_api import MigLibrary


def possible_placements(nvml: MigLibrary, device: Any, profile_id: int) -> list[tuple[int, int]]:
    """Every (start, size) placement of a GI profile, in memory slices, whether occupied or not."""
    count = ctypes.c_uint(0)
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(device, profile_id, None, ctypes.pointer(count))
    placements = (nvml.c_nvmlGpuInstancePlacement_t * count.value)()
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(device, profile_id, placements, ctypes.pointer(count))
    return [(int(placements[i].start), int(placements[i].size)) for i in range(count.value)]


def create_gpu_instance(nvml: MigLibrary, device: Any, profile_id: int, start: int, size: int) -> Any:
    """Create a GI at an explicit placement (never auto-placed: that fragments the GPU); its handle."""
    placement = nvml.c_nvmlGpuInstancePlacement_t()
    placement.start, placement.size = start, size
    return nvml.nvmlDeviceCreateGpuInstanceWithPlacement(device, profile_id, ctypes.pointer(placement))


def gpu_instances(nvml: MigLibrary, device: Any, profile_id: int, capacity: int) -> list[Any]:
    """Handles of the live GIs of one profile; `capacity` is the profile's instanceCount."""
    count = ctypes.c_uint(capacity)
    handles = (nvml.c_nvmlGpuInstance_t * capacity)()
    nvml.nvmlDeviceGetGpuInstances(device, profile_id, handles, ctypes.pointer(count))
    return [handles[i] for i in range(count.value)]

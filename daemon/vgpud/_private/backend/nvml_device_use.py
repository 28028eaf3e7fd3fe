"""How full and how busy a whole GPU is, as NVML reports it: the per-GPU "used" metrics on real GPUs.

Device-wide numbers count every process on the GPU, vgpu's or not, which is what an operator comparing
allocation with use needs. A GPU in MIG mode answers NOT_SUPPORTED for utilisation; its value is left out.
Plain functions over the pynvml module, so tests can pass a fake one.
"""

from __future__ import annotations

from typing import Any

from vgpud._private.backend.base import DeviceUse
from vgpud._private.backend.nvml_processes import mismatch_errors

_PERCENT = 100


def device_use(nvml: Any, gpu_uuid: str) -> DeviceUse | None:
    """One GPU's used memory and utilisation; None when NVML cannot find or read it at all."""
    errors = (nvml.NVMLError, *mismatch_errors(nvml))
    try:
        handle = nvml.nvmlDeviceGetHandleByUUID(gpu_uuid)
    except errors:
        return None
    memory: int | None
    try:
        memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    except errors:
        memory = None
    busy: float | None
    try:
        busy = min(1.0, max(0.0, int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / _PERCENT))
    except (*errors, AttributeError):  # AttributeError: a library without the call (the simulator's)
        busy = None
    if memory is None and busy is None:
        return None
    return DeviceUse(memory_used_bytes=memory, utilization=busy)

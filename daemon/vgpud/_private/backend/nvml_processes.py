"""Which host processes use a GPU, how much memory and how busy: what the node watchdog reads from NVML.

NVML reports host pids (the driver ignores PID namespaces). On a MIG GPU the parent handle lists every
process with its GPU-instance id, which maps it to a MIG device; per-process utilisation is not supported
there ("not currently supported" on MIG), so those processes come back with `sm_percent=None`.
Plain functions over the pynvml module, so tests can pass a fake one.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from vgpud._private.backend.base import ProcessGpuUse
from vgpud._private.backend.nvml_codes import NVML_ERROR_NOT_FOUND, error_code
from vgpud._private.backend.nvml_codes import nvml_str as _text

_NO_INSTANCE = 0xFFFFFFFF
"""gpuInstanceId of a process on a GPU without MIG."""


def gpu_processes(nvml: Any, gpu_uuid: str) -> list[ProcessGpuUse]:
    """Every compute (and MPS client) process on one GPU; raises nvml.NVMLError when NVML cannot say."""
    handle = nvml.nvmlDeviceGetHandleByUUID(gpu_uuid)
    items = _running(nvml, "nvmlDeviceGetComputeRunningProcesses", handle)
    if hasattr(nvml, "nvmlDeviceGetMPSComputeRunningProcesses"):
        # No MPS server on this GPU (or a driver without the call): the plain list is then complete.
        with contextlib.suppress(nvml.NVMLError, *mismatch_errors(nvml)):
            items.extend(_running(nvml, "nvmlDeviceGetMPSComputeRunningProcesses", handle))
    instances = _mig_devices(nvml, handle) if any(_instance_of(i) != _NO_INSTANCE for i in items) else {}
    busy = _sm_percent_by_pid(nvml, handle)
    uses: dict[tuple[int, str], ProcessGpuUse] = {}
    for item in items:
        pid = int(item.pid)
        mig_uuid = instances.get(_instance_of(item), "")
        memory = getattr(item, "usedGpuMemory", None)
        key = (pid, mig_uuid)
        earlier = uses.get(key)
        total = None if memory is None else int(memory)
        if earlier is not None and earlier.memory_bytes is not None and total is not None:
            total += earlier.memory_bytes
        uses[key] = ProcessGpuUse(
            pid=pid,
            gpu_uuid=gpu_uuid,
            mig_uuid=mig_uuid,
            memory_bytes=total,
            sm_percent=None if mig_uuid else busy.get(pid, 0),
        )
    return list(uses.values())


def _running(nvml: Any, call: str, handle: Any) -> list[Any]:
    """A process list from `call`, or from its `_v2` form on a driver older than pynvml's default (`_v3`).

    pynvml's unversioned calls raise NVMLLibraryMismatchError, which is no NVMLError, when the driver lacks
    the version they use (drivers before about R510); the `_v2` forms read the same fields there.
    """
    try:
        return list(getattr(nvml, call)(handle))
    except mismatch_errors(nvml):
        older = getattr(nvml, f"{call}_v2", None)
        if older is None:
            raise
        return list(older(handle))


def mismatch_errors(nvml: Any) -> tuple[type[BaseException], ...]:
    """Pynvml's NVMLLibraryMismatchError as an except clause (empty for a module without it)."""
    error = getattr(nvml, "NVMLLibraryMismatchError", None)
    return (error,) if isinstance(error, type) and issubclass(error, BaseException) else ()


def _instance_of(item: Any) -> int:
    value = getattr(item, "gpuInstanceId", _NO_INSTANCE)
    return _NO_INSTANCE if value is None else int(value)


def _mig_devices(nvml: Any, handle: Any) -> dict[int, str]:
    """GPU-instance id -> MIG device UUID, for the MIG devices that exist now."""
    found: dict[int, str] = {}
    for index in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index)
        except nvml.NVMLError as exc:
            if error_code(exc) == NVML_ERROR_NOT_FOUND:
                continue
            raise
        found[int(nvml.nvmlDeviceGetGpuInstanceId(mig))] = _text(nvml.nvmlDeviceGetUUID(mig))
    return found


def _sm_percent_by_pid(nvml: Any, handle: Any) -> dict[int, int]:
    """The last second's SM utilisation per pid; empty when nothing ran or NVML cannot sample this GPU."""
    since_us = int((time.time() - 1.0) * 1_000_000)
    try:
        samples = nvml.nvmlDeviceGetProcessUtilization(handle, since_us)
    except nvml.NVMLError:
        # NOT_FOUND: no sample since `since_us` (idle). A first-call SUCCESS surfaces as a plain NVMLError
        # with value 0 in pynvml, and MIG answers NOT_SUPPORTED: in all three there is nothing to read.
        return {}
    busy: dict[int, int] = {}
    for sample in samples:
        pid = int(sample.pid)
        busy[pid] = max(busy.get(pid, 0), int(sample.smUtil))
    return busy

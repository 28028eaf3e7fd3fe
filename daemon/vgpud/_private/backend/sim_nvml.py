"""The simulated NVML: pynvml's MIG calls over `SimMig`, with pynvml's names, ctypes conventions and codes.

Array and placement arguments are the ctypes objects a pynvml caller builds (arrays sized by the caller,
counts and placements passed by reference), so `mig_calls` runs unchanged over the simulator. Privileged
calls answer NO_PERMISSION while `privileged` is False, as for a daemon without root or the MIG capability.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

from vgpud._private.backend.nvml_codes import (
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_FOUND,
    NVML_SUCCESS,
    NVML_VALUE_NOT_AVAILABLE_UINT,
)
from vgpud._private.backend.sim_devices import SimGpu, SimNvmlBase
from vgpud._private.backend.sim_mig import SimComputeInstance, SimGpuInstance
from vgpud._private.backend.sim_structs import (
    ComputeInstanceHandle,
    GpuHandle,
    GpuInstanceHandle,
    MigDeviceHandle,
    SimComputeInstanceInfo,
    SimComputeInstanceProfileInfo,
    SimGpuInstanceInfo,
    SimGpuInstanceProfileInfo,
    SimMemoryInfo,
    SimNvmlError,
    SimPlacement,
    SimPlacementInfo,
    SimProcess,
    deref,
    fill,
)

_MIB = 1024 * 1024


class SimNvml(SimNvmlBase):
    """`MigLibrary` answered from the geometry table and each GPU's `SimMig`."""

    c_nvmlGpuInstancePlacement_t: Any = SimPlacement  # noqa: N815 -- pynvml's names
    c_nvmlGpuInstance_t: Any = ctypes.py_object  # noqa: N815 -- pynvml's names; sim handles are Python objects
    c_nvmlComputeInstance_t: Any = ctypes.py_object  # noqa: N815 -- pynvml's names; sim handles are Python objects

    def __init__(self, gpus: list[SimGpu]) -> None:
        """Serve these GPUs; `on_change` (if set) runs after every change of MIG state, under the lock."""
        super().__init__(gpus)
        self.privileged = True
        """False: create, destroy, enumerate and mode changes answer NO_PERMISSION."""
        self.on_change: Callable[[], None] | None = None
        self.mig_lock = threading.RLock()
        """Held by every MIG call, and by `on_change`."""

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _privileged(self) -> None:
        if not self.privileged:
            raise SimNvmlError(NVML_ERROR_NO_PERMISSION)

    def _gi(self, handle: object) -> tuple[SimGpu, SimGpuInstance]:
        if not isinstance(handle, GpuInstanceHandle):
            self._check()
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._gpu_at(handle.index)
        gi = gpu.mig.gis.get(handle.gpu_instance_id)
        if gi is None or gi.serial != handle.serial:
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)  # a handle of a destroyed instance
        return gpu, gi

    def _ci(self, handle: object) -> tuple[SimGpu, SimGpuInstance, SimComputeInstance]:
        if not isinstance(handle, ComputeInstanceHandle | MigDeviceHandle):
            self._check()
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._gpu_at(handle.index)
        gi = gpu.mig.gis.get(handle.gpu_instance_id)
        ci = gi.cis.get(handle.compute_instance_id) if gi is not None else None
        if gi is None or ci is None or ci.serial != handle.serial:
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu, gi, ci

    # MIG mode and GPU-instance profiles.

    def nvmlDeviceSetMigMode(self, device: object, mode: int) -> int:  # noqa: N802 -- pynvml's names
        """The activation status: IN_USE while instances or processes exist, RESET_REQUIRED if it pends."""
        with self.mig_lock:
            gpu = self._gpu(device)
            gpu.mig.require_capable()
            self._privileged()
            if mode not in (0, 1):
                raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
            before = (gpu.mig.current, gpu.mig.pending)
            status = gpu.mig.set_mode(bool(mode))
            if (gpu.mig.current, gpu.mig.pending) != before:
                self._changed()
            return status

    def nvmlDeviceGetGpuInstanceProfileInfo(  # noqa: N802 -- pynvml's names
        self, device: object, profile: int, version: int = 2
    ) -> SimGpuInstanceProfileInfo:
        """GI profile by NVML index; NOT_SUPPORTED while MIG is off or for an index the model lacks."""
        if version not in (1, 2):
            raise SimNvmlError(NVML_ERROR_FUNCTION_NOT_FOUND)  # what pynvml raises for other versions
        with self.mig_lock:
            p = self._gpu(device).mig.profile_at(profile)
        return SimGpuInstanceProfileInfo(
            id=p.id,
            sliceCount=p.compute_slices,
            instanceCount=p.max_instances,
            multiprocessorCount=p.sm_count,
            memorySizeMB=p.memory_mib,
            name=f"MIG {p.name}",
        )

    def nvmlDeviceGetGpuInstancePossiblePlacements(  # noqa: N802 -- pynvml's names
        self, device: object, profile_id: int, placements: Any, count: Any
    ) -> int:
        """Every placement of a profile, MIG on or off (privileged); `placements` None asks for the count."""
        with self.mig_lock:
            gpu = self._gpu(device)
            profile = gpu.mig.profile(profile_id)
            self._privileged()
            counter = deref(count)
            found = profile.placements()
            if placements is not None:
                fill(placements, [], len(found))
                for slot, (start, size) in zip(placements, found, strict=False):
                    slot.start, slot.size = start, size
            counter.value = len(found)
            return NVML_SUCCESS

    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, device: object, profile_id: int) -> int:  # noqa: N802 -- pynvml's names
        """How many more GIs of the profile fit now."""
        with self.mig_lock:
            return self._gpu(device).mig.remaining_capacity(profile_id)

    # GPU instances.

    def nvmlDeviceCreateGpuInstanceWithPlacement(  # noqa: N802 -- pynvml's names
        self, device: object, profile_id: int, placement: Any
    ) -> GpuInstanceHandle:
        """Explicit placement only, passed by reference (pynvml has no argtypes for it)."""
        with self.mig_lock:
            gpu = self._gpu(device)
            gpu.mig.require_capable()
            self._privileged()
            where = deref(placement)
            gi = gpu.mig.create_gi(profile_id, int(where.start), int(where.size))
            self._changed()
            return GpuInstanceHandle(gpu.index, gi.id, gi.serial)

    def nvmlGpuInstanceDestroy(self, gpu_instance: object) -> int:  # noqa: N802 -- pynvml's names
        """IN_USE while compute instances (or processes) are on it."""
        with self.mig_lock:
            gpu, gi = self._gi(gpu_instance)
            self._privileged()
            gpu.mig.destroy_gi(gi)
            self._changed()
            return NVML_SUCCESS

    def nvmlDeviceGetGpuInstances(  # noqa: N802 -- pynvml's names
        self, device: object, profile_id: int, instances: Any, count: Any
    ) -> int:
        """Fill a caller-sized array (at least instanceCount long) with the live GIs of a profile."""
        with self.mig_lock:
            gpu = self._gpu(device)
            gpu.mig.require_on()
            self._privileged()
            profile = gpu.mig.profile(profile_id)
            live = [
                GpuInstanceHandle(gpu.index, gi.id, gi.serial) for gi in gpu.mig.gis.values() if gi.profile is profile
            ]
            counter = deref(count)
            fill(instances, sorted(live, key=lambda h: h.gpu_instance_id), profile.max_instances)
            counter.value = len(live)
            return NVML_SUCCESS

    def nvmlDeviceGetGpuInstanceById(self, device: object, gpu_instance_id: int) -> GpuInstanceHandle:  # noqa: N802 -- pynvml's names
        """NOT_FOUND when no GI has this ID."""
        with self.mig_lock:
            gpu = self._gpu(device)
            gpu.mig.require_on()
            self._privileged()
            gi = gpu.mig.gis.get(gpu_instance_id)
            if gi is None:
                raise SimNvmlError(NVML_ERROR_NOT_FOUND)
            return GpuInstanceHandle(gpu.index, gi.id, gi.serial)

    def nvmlGpuInstanceGetInfo(self, gpu_instance: object) -> SimGpuInstanceInfo:  # noqa: N802 -- pynvml's names
        """ID, profile ID and placement of a GI."""
        with self.mig_lock:
            gpu, gi = self._gi(gpu_instance)
            return SimGpuInstanceInfo(
                device=GpuHandle(gpu.index),
                id=gi.id,
                profileId=gi.profile.id,
                placement=SimPlacementInfo(gi.start, gi.profile.memory_slices),
            )

    # Compute instances.

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(  # noqa: N802 -- pynvml's names
        self, gpu_instance: object, profile: int, engine_profile: int, version: int = 2
    ) -> SimComputeInstanceProfileInfo:
        """CI profile by NVML index; NOT_SUPPORTED when it is wider than the GI."""
        if version not in (1, 2):
            raise SimNvmlError(NVML_ERROR_FUNCTION_NOT_FOUND)
        with self.mig_lock:
            gpu, gi = self._gi(gpu_instance)
            if engine_profile != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED:
                raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
            slices, count = gpu.mig.ci_profile(gi, profile)
        whole = gi.profile.compute_slices
        return SimComputeInstanceProfileInfo(
            id=profile,
            sliceCount=slices,
            instanceCount=count,
            multiprocessorCount=gi.profile.sm_count * slices // whole,
            name=f"MIG {gi.profile.name}" if slices == whole else f"MIG {slices}c.{gi.profile.name}",
        )

    def nvmlGpuInstanceCreateComputeInstance(self, gpu_instance: object, profile_id: int) -> ComputeInstanceHandle:  # noqa: N802 -- pynvml's names
        """A CI at the lowest free start in the GI; INSUFFICIENT_RESOURCES when none fits."""
        with self.mig_lock:
            gpu, gi = self._gi(gpu_instance)
            self._privileged()
            ci = gpu.mig.create_ci(gi, profile_id)
            self._changed()
            return ComputeInstanceHandle(gpu.index, gi.id, ci.id, ci.serial)

    def nvmlComputeInstanceDestroy(self, compute_instance: object) -> int:  # noqa: N802 -- pynvml's names
        """IN_USE while processes run on it."""
        with self.mig_lock:
            gpu, gi, ci = self._ci(compute_instance)
            self._privileged()
            gpu.mig.destroy_ci(gi, ci)
            self._changed()
            return NVML_SUCCESS

    def nvmlGpuInstanceGetComputeInstances(  # noqa: N802 -- pynvml's names
        self, gpu_instance: object, profile_id: int, instances: Any, count: Any
    ) -> int:
        """Fill a caller-sized array (at least the CI profile's instanceCount) with the GI's CIs of a profile."""
        with self.mig_lock:
            gpu, gi = self._gi(gpu_instance)
            self._privileged()
            _slices, most = gpu.mig.ci_profile(gi, profile_id)
            live = [
                ComputeInstanceHandle(gpu.index, gi.id, c.id, c.serial)
                for c in gi.cis.values()
                if c.profile_id == profile_id
            ]
            counter = deref(count)
            fill(instances, sorted(live, key=lambda h: h.compute_instance_id), most)
            counter.value = len(live)
            return NVML_SUCCESS

    def nvmlGpuInstanceGetComputeInstanceById(  # noqa: N802 -- pynvml's names
        self, gpu_instance: object, compute_instance_id: int
    ) -> ComputeInstanceHandle:
        """NOT_FOUND when the GI has no CI with this ID."""
        with self.mig_lock:
            gpu, gi = self._gi(gpu_instance)
            self._privileged()
            ci = gi.cis.get(compute_instance_id)
            if ci is None:
                raise SimNvmlError(NVML_ERROR_NOT_FOUND)
            return ComputeInstanceHandle(gpu.index, gi.id, ci.id, ci.serial)

    def nvmlComputeInstanceGetInfo(self, compute_instance: object) -> SimComputeInstanceInfo:  # noqa: N802 -- pynvml's names
        """ID, profile and placement of a CI."""
        with self.mig_lock:
            gpu, gi, ci = self._ci(compute_instance)
            return SimComputeInstanceInfo(
                device=GpuHandle(gpu.index),
                gpuInstance=GpuInstanceHandle(gpu.index, gi.id, gi.serial),
                id=ci.id,
                profileId=ci.profile_id,
                placement=SimPlacementInfo(ci.start, ci.slices),
            )

    # MIG devices: one per CI.

    def nvmlDeviceGetMaxMigDeviceCount(self, device: object) -> int:  # noqa: N802 -- pynvml's names
        """The compute-slice count: at most one MIG device per compute slice."""
        gpu = self._gpu(device)
        gpu.mig.require_capable()
        return gpu.model.compute_slices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: object, index: int) -> MigDeviceHandle:  # noqa: N802 -- pynvml's names
        """NOT_FOUND for an index with no MIG device; INVALID_ARGUMENT past the maximum."""
        with self.mig_lock:
            gpu = self._gpu(device)
            if not 0 <= index < self.nvmlDeviceGetMaxMigDeviceCount(device):
                raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
            devices = gpu.mig.mig_devices()
            if index >= len(devices):
                raise SimNvmlError(NVML_ERROR_NOT_FOUND)
            gi, ci = devices[index]
            return MigDeviceHandle(gpu.index, gi.id, ci.id, ci.serial)

    def nvmlDeviceGetGpuInstanceId(self, device: object) -> int:  # noqa: N802 -- pynvml's names
        """GI ID of a MIG device; INVALID_ARGUMENT for a physical GPU."""
        with self.mig_lock:
            return self._mig_device(device)[1].id

    def nvmlDeviceGetComputeInstanceId(self, device: object) -> int:  # noqa: N802 -- pynvml's names
        """CI ID of a MIG device; INVALID_ARGUMENT for a physical GPU."""
        with self.mig_lock:
            return self._mig_device(device)[2].id

    def _mig_device(self, handle: object) -> tuple[SimGpu, SimGpuInstance, SimComputeInstance]:
        if not isinstance(handle, MigDeviceHandle):
            self._check()
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
        return self._ci(handle)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> object:  # noqa: N802 -- pynvml's names
        """A physical GPU, or a MIG device by its "MIG-..." UUID."""
        if not uuid.startswith("MIG-"):
            return super().nvmlDeviceGetHandleByUUID(uuid)
        self._check()
        with self.mig_lock:
            for gpu in self.gpus:
                for gi, ci in gpu.mig.mig_devices():
                    if ci.uuid == uuid:
                        return MigDeviceHandle(gpu.index, gi.id, ci.id, ci.serial)
        raise SimNvmlError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: object) -> str:  # noqa: N802 -- pynvml's names
        """The "GPU-..." UUID of a GPU, the "MIG-..." UUID of a MIG device."""
        if isinstance(handle, MigDeviceHandle):
            with self.mig_lock:
                return self._ci(handle)[2].uuid
        return super().nvmlDeviceGetUUID(handle)

    def nvmlDeviceGetName(self, handle: object) -> str:  # noqa: N802 -- pynvml's names
        """A MIG device is named "<product> MIG <profile>", as the driver names it."""
        if isinstance(handle, MigDeviceHandle):
            with self.mig_lock:
                gpu, gi, _ci = self._ci(handle)
                return f"{gpu.model.product_name} MIG {gi.profile.name}"
        return super().nvmlDeviceGetName(handle)

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> SimMemoryInfo:  # noqa: N802 -- pynvml's names
        """A MIG device has its GI's memory."""
        if isinstance(handle, MigDeviceHandle):
            with self.mig_lock:
                total = self._ci(handle)[1].profile.memory_mib * _MIB
            return SimMemoryInfo(total=total, free=total, used=0)
        return super().nvmlDeviceGetMemoryInfo(handle)

    # Processes.

    def nvmlDeviceGetComputeRunningProcesses(self, device: object) -> list[SimProcess]:  # noqa: N802 -- pynvml's names
        """On a GPU: every fake process on it; on a MIG device: those inside it."""
        with self.mig_lock:
            if isinstance(device, MigDeviceHandle):
                _gpu, gi, ci = self._ci(device)
                return [SimProcess(pid, 0, gi.id, ci.id) for pid in ci.pids]
            gpu = self._gpu(device)
            none = NVML_VALUE_NOT_AVAILABLE_UINT
            found = [SimProcess(pid, 0, none, none) for pid in gpu.mig.gpu_pids]
            found += [SimProcess(pid, 0, gi.id, ci.id) for gi, ci in gpu.mig.mig_devices() for pid in ci.pids]
            return found

    def add_process(self, uuid: str, pid: int) -> None:
        """Put a fake process on a GPU (MIG off) or on a MIG device, as starting a CUDA program would."""
        with self.mig_lock:
            for gpu in self.gpus:
                if gpu.uuid == uuid and not gpu.mig.current:
                    gpu.mig.gpu_pids.append(pid)
                    return
                for _gi, ci in gpu.mig.mig_devices():
                    if ci.uuid == uuid:
                        ci.pids.append(pid)
                        return
        raise ValueError(f"no MIG device or MIG-off GPU {uuid} to run pid {pid} on")

    def remove_process(self, pid: int) -> None:
        """The fake process exits."""
        with self.mig_lock:
            for gpu in self.gpus:
                gpu.mig.gpu_pids[:] = [p for p in gpu.mig.gpu_pids if p != pid]
                for _gi, ci in gpu.mig.mig_devices():
                    ci.pids[:] = [p for p in ci.pids if p != pid]

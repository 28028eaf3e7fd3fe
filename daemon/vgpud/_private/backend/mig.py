"""MIG operations for the daemon, written once over `MigLibrary`: pynvml on a GPU, SimNvml in the sim.

The sequence is the reference's (gpu-slicing.md section 2): explicit placements only, one full-size compute
instance per GPU instance with shared engines, the MIG UUID found through the MIG device handles. Profiles
and placements are read from NVML, never from the geometry table, so new drivers and models just work.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from vgpud._private.backend import mig_calls
from vgpud._private.backend.base import BackendError, MigInstance, MigMode, MigProfileInfo
from vgpud._private.backend.mig_errors import busy_mode_error, failure, no_room_error, reset_mode_error
from vgpud._private.backend.nvml_api import MigLibrary
from vgpud._private.backend.nvml_codes import (
    CI_PROFILE_INDEX_BY_SLICES,
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
    NVML_DEVICE_MIG_DISABLE,
    NVML_DEVICE_MIG_ENABLE,
    NVML_ERROR_IN_USE,
    NVML_ERROR_INSUFFICIENT_RESOURCES,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_RESET_REQUIRED,
    NVML_GPU_INSTANCE_PROFILE_COUNT,
    NVML_SUCCESS,
    error_code,
    error_text,
    nvml_str,
)

_MIB = 1024 * 1024
_ABSENT = frozenset({NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_INVALID_ARGUMENT})
"""What NVML answers for a profile index this GPU does not have."""


@dataclass(frozen=True, slots=True)
class _MigDevice:
    """A MIG device handle: one per compute instance."""

    gpu_instance_id: int
    """GI it belongs to."""
    compute_instance_id: int
    """CI it stands for."""
    uuid: str
    """"MIG-..." UUID."""
    handle: Any
    """NVML handle, for process queries."""


class MigOps:
    """The MIG half of a backend; calls are serialised, as each is a multi-step NVML sequence."""

    def __init__(self, nvml: MigLibrary) -> None:
        """Work through `nvml` (already initialised by the backend)."""
        self._nvml = nvml
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _errors(self, gpu: str, what: str) -> Iterator[None]:
        """Turn an NVML error inside the block into a BackendError naming the GPU, the step and the cause."""
        try:
            yield
        except self._nvml.NVMLError as exc:
            raise failure(gpu, what, exc) from None

    def _device(self, gpu: str) -> Any:
        try:
            return self._nvml.nvmlDeviceGetHandleByUUID(gpu)
        except self._nvml.NVMLError as exc:
            if error_code(exc) in (NVML_ERROR_NOT_FOUND, NVML_ERROR_INVALID_ARGUMENT):
                raise BackendError(f"GPU {gpu} not found on this host (NVML: {exc})") from None
            raise failure(gpu, "nvmlDeviceGetHandleByUUID", exc) from None

    def _mig_on(self, gpu: str, device: Any) -> bool:
        try:
            current, _pending = self._nvml.nvmlDeviceGetMigMode(device)
        except self._nvml.NVMLError as exc:
            if error_code(exc) == NVML_ERROR_NOT_SUPPORTED:
                return False
            raise failure(gpu, "nvmlDeviceGetMigMode", exc) from None
        return int(current) == NVML_DEVICE_MIG_ENABLE

    def _require_mig(self, gpu: str, device: Any) -> None:
        if not self._mig_on(gpu, device):
            raise BackendError(
                f"{gpu}: MIG is off (or the GPU has no MIG), so it has no MIG profiles or instances; turn MIG on first"
            )

    def set_mode(self, gpu: str, enabled: bool) -> MigMode:
        """Turn MIG on or off; an activation status other than success becomes a BackendError."""
        word = "on" if enabled else "off"
        with self._lock:
            device = self._device(gpu)
            if not enabled and self._mig_on(gpu, device):
                # Whether NVML refuses this with GIs present is unverified: refuse it ourselves.
                existing = self._instances(gpu, device)
                if existing:
                    names = ", ".join(f"{i.profile_name} (GPU instance {i.gpu_instance_id})" for i in existing)
                    raise BackendError(
                        f"{gpu}: cannot turn MIG off while MIG instances exist: {names}; destroy them first"
                    )
            try:
                mode = NVML_DEVICE_MIG_ENABLE if enabled else NVML_DEVICE_MIG_DISABLE
                status = int(self._nvml.nvmlDeviceSetMigMode(device, mode))
            except self._nvml.NVMLError as exc:
                code = error_code(exc)
                if code == NVML_ERROR_NOT_SUPPORTED:
                    raise BackendError(f"{gpu} does not support MIG (NVML: {exc})") from None
                if code not in (NVML_ERROR_IN_USE, NVML_ERROR_RESET_REQUIRED):
                    raise failure(gpu, f"turning MIG {word} (nvmlDeviceSetMigMode)", exc) from None
                status = code  # Some drivers raise what the call documents as its activation status.
            if status == NVML_ERROR_IN_USE:
                raise busy_mode_error(gpu, word)
            if status == NVML_ERROR_RESET_REQUIRED:
                raise reset_mode_error(gpu, word)
            if status != NVML_SUCCESS:
                raise BackendError(
                    f"{gpu}: MIG was not turned {word}: activation status {status} ({error_text(status)})"
                )
            with self._errors(gpu, "nvmlDeviceGetMigMode"):
                current, pending = self._nvml.nvmlDeviceGetMigMode(device)
        return MigMode(current=int(current) == NVML_DEVICE_MIG_ENABLE, pending=int(pending) == NVML_DEVICE_MIG_ENABLE)

    def profiles(self, gpu: str) -> list[MigProfileInfo]:
        """The GI profiles NVML reports, in NVML index order; MIG must be on."""
        with self._lock:
            device = self._device(gpu)
            self._require_mig(gpu, device)
            return self._profiles(gpu, device)

    def _profiles(self, gpu: str, device: Any) -> list[MigProfileInfo]:
        found: list[MigProfileInfo] = []
        for index in range(NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                info = self._nvml.nvmlDeviceGetGpuInstanceProfileInfo(device, index)
            except self._nvml.NVMLError as exc:
                if error_code(exc) in _ABSENT:
                    continue
                raise failure(gpu, f"reading MIG profile index {index}", exc) from None
            profile_id = int(info.id)
            name = nvml_str(getattr(info, "name", "")).removeprefix("MIG ") or f"profile {profile_id}"
            with self._errors(gpu, f"reading the placements of {name}"):
                placements = mig_calls.possible_placements(self._nvml, device, profile_id)
            found.append(
                MigProfileInfo(
                    id=profile_id,
                    name=name,
                    nvml_index=index,
                    compute_slices=int(info.sliceCount),
                    memory_slices=max((size for _, size in placements), default=0),
                    instance_count=int(info.instanceCount),
                    memory_bytes=int(info.memorySizeMB) * _MIB,
                    sm_count=int(info.multiprocessorCount),
                    starts=tuple(start for start, _ in placements),
                )
            )
        return found

    def _mig_devices(self, gpu: str, device: Any) -> list[_MigDevice]:
        nvml = self._nvml
        found: list[_MigDevice] = []
        with self._errors(gpu, "nvmlDeviceGetMaxMigDeviceCount"):
            count = int(nvml.nvmlDeviceGetMaxMigDeviceCount(device))
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(device, index)
            except nvml.NVMLError as exc:
                if error_code(exc) in (NVML_ERROR_NOT_FOUND, NVML_ERROR_INVALID_ARGUMENT):
                    continue
                raise failure(gpu, f"reading MIG device {index}", exc) from None
            with self._errors(gpu, f"reading MIG device {index}"):
                found.append(
                    _MigDevice(
                        gpu_instance_id=int(nvml.nvmlDeviceGetGpuInstanceId(handle)),
                        compute_instance_id=int(nvml.nvmlDeviceGetComputeInstanceId(handle)),
                        uuid=nvml_str(nvml.nvmlDeviceGetUUID(handle)),
                        handle=handle,
                    )
                )
        return sorted(found, key=lambda d: (d.gpu_instance_id, d.compute_instance_id))

    def instances(self, gpu: str) -> list[MigInstance]:
        """Every GI on the GPU now, by start; none while MIG is off."""
        with self._lock:
            device = self._device(gpu)
            if not self._mig_on(gpu, device):
                return []
            return self._instances(gpu, device)

    def _instances(self, gpu: str, device: Any) -> list[MigInstance]:
        devices = self._mig_devices(gpu, device)
        found: list[MigInstance] = []
        for profile in self._profiles(gpu, device):
            with self._errors(gpu, f"listing {profile.name} GPU instances"):
                handles = mig_calls.gpu_instances(self._nvml, device, profile.id, profile.instance_count)
                infos = [self._nvml.nvmlGpuInstanceGetInfo(handle) for handle in handles]
            found.extend(self._instance(gpu, profile, info, devices) for info in infos)
        return sorted(found, key=lambda i: (i.start, i.gpu_instance_id))

    @staticmethod
    def _instance(gpu: str, profile: MigProfileInfo, gi_info: Any, devices: list[_MigDevice]) -> MigInstance:
        gi_id = int(gi_info.id)
        mine = [d for d in devices if d.gpu_instance_id == gi_id]
        return MigInstance(
            gpu_uuid=gpu,
            gpu_instance_id=gi_id,
            compute_instance_id=mine[0].compute_instance_id if mine else None,
            profile_id=profile.id,
            profile_name=profile.name,
            start=int(gi_info.placement.start),
            size=int(gi_info.placement.size),
            mig_uuid=mine[0].uuid if mine else None,
            memory_bytes=profile.memory_bytes,
            sm_count=profile.sm_count,
        )

    def create(self, gpu: str, profile_id: int, start: int) -> MigInstance:
        """GI at (profile, start) -> full-size CI -> MIG UUID; the GI is destroyed again if a step fails."""
        with self._lock:
            device = self._device(gpu)
            self._require_mig(gpu, device)
            profiles = self._profiles(gpu, device)
            profile = next((p for p in profiles if p.id == profile_id), None)
            if profile is None:
                known = ", ".join(f"{p.name} (id {p.id})" for p in profiles) or "none"
                raise BackendError(f"{gpu} has no MIG profile id {profile_id}; its profiles: {known}")
            if start not in profile.starts:
                starts = ", ".join(map(str, profile.starts)) or "none"
                raise BackendError(f"{gpu}: {profile.name} cannot start at slot {start}; its slots: {starts}")
            try:
                gi = mig_calls.create_gpu_instance(self._nvml, device, profile.id, start, profile.memory_slices)
            except self._nvml.NVMLError as exc:
                if error_code(exc) != NVML_ERROR_INSUFFICIENT_RESOURCES:
                    raise failure(gpu, f"creating {profile.name} at slot {start}", exc) from None
                try:
                    existing: list[MigInstance] | None = self._instances(gpu, device)
                except BackendError:
                    existing = None  # the refusal matters more than the details
                raise no_room_error(gpu, profile, start, exc, existing) from None
            created: list[Any] = []
            try:
                return self._add_compute_instance(gpu, device, profile, gi, created)
            except BackendError as exc:
                raise BackendError(f"{exc}; {self._undo(gi, created)}") from None
            except BaseException:
                self._undo(gi, created)
                raise

    def _add_compute_instance(
        self, gpu: str, device: Any, profile: MigProfileInfo, gi: Any, created: list[Any]
    ) -> MigInstance:
        nvml = self._nvml
        what = f"creating {profile.name}"
        with self._errors(gpu, f"{what}: nvmlGpuInstanceGetInfo"):
            gi_info = nvml.nvmlGpuInstanceGetInfo(gi)
        index = CI_PROFILE_INDEX_BY_SLICES.get(profile.compute_slices)
        if index is None:
            raise BackendError(f"{gpu}: {what}: no compute-instance profile covers {profile.compute_slices} slices")
        with self._errors(gpu, f"{what}: nvmlGpuInstanceGetComputeInstanceProfileInfo"):
            ci_profile = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, index, NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
            )
        with self._errors(gpu, f"{what}: nvmlGpuInstanceCreateComputeInstance"):
            created.append(nvml.nvmlGpuInstanceCreateComputeInstance(gi, int(ci_profile.id)))
        with self._errors(gpu, f"{what}: nvmlComputeInstanceGetInfo"):
            ci_id = int(nvml.nvmlComputeInstanceGetInfo(created[-1]).id)
        instance = self._instance(gpu, profile, gi_info, self._mig_devices(gpu, device))
        if instance.compute_instance_id != ci_id or instance.mig_uuid is None:
            raise BackendError(f"{gpu}: {what}: no MIG device shows GPU instance {instance.gpu_instance_id}")
        return instance

    def _undo(self, gi: Any, created: list[Any]) -> str:
        """Destroy a half-made instance; says what happened, for the error message."""
        problems: list[str] = []
        for ci in reversed(created):
            try:
                self._nvml.nvmlComputeInstanceDestroy(ci)
            except self._nvml.NVMLError as exc:
                problems.append(f"nvmlComputeInstanceDestroy: {exc}")
        try:
            self._nvml.nvmlGpuInstanceDestroy(gi)
        except self._nvml.NVMLError as exc:
            problems.append(f"nvmlGpuInstanceDestroy: {exc}")
        if problems:
            return f"cleaning up failed ({'; '.join(problems)}): destroy that GPU instance by hand"
        return "the new GPU instance was destroyed again"

    def destroy(self, gpu: str, gpu_instance_id: int, owned: Collection[str]) -> None:
        """Destroy a GI and its CIs; refused for an instance vgpu did not create or one with processes."""
        nvml = self._nvml
        what = f"destroying GPU instance {gpu_instance_id}"
        with self._lock:
            device = self._device(gpu)
            try:
                gi = nvml.nvmlDeviceGetGpuInstanceById(device, gpu_instance_id)
            except nvml.NVMLError as exc:
                if error_code(exc) in (NVML_ERROR_NOT_FOUND, NVML_ERROR_INVALID_ARGUMENT):
                    raise BackendError(f"{gpu} has no MIG GPU instance {gpu_instance_id} (NVML: {exc})") from None
                raise failure(gpu, what, exc) from None
            devices = [d for d in self._mig_devices(gpu, device) if d.gpu_instance_id == gpu_instance_id]
            foreign = [d.uuid for d in devices if d.uuid not in owned]
            if foreign or not devices:
                whose = ", ".join(foreign) or "it has no compute instance"
                raise BackendError(
                    f"{gpu}: GPU instance {gpu_instance_id} was not created by vgpu ({whose}); "
                    "vgpud destroys only the instances it made"
                )
            for d in devices:
                with self._errors(gpu, f"{what}: listing processes on {d.uuid}"):
                    pids = sorted(int(p.pid) for p in nvml.nvmlDeviceGetComputeRunningProcesses(d.handle))
                if pids:
                    raise BackendError(
                        f"{gpu}: GPU instance {gpu_instance_id} ({d.uuid}) has processes on it "
                        f"(pids {', '.join(map(str, pids))}); stop them before destroying it"
                    )
            for d in devices:
                with self._errors(gpu, f"{what}: compute instance {d.compute_instance_id}"):
                    nvml.nvmlComputeInstanceDestroy(
                        nvml.nvmlGpuInstanceGetComputeInstanceById(gi, d.compute_instance_id)
                    )
            with self._errors(gpu, what):
                nvml.nvmlGpuInstanceDestroy(gi)

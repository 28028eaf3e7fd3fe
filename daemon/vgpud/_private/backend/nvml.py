"""Real GPUs through NVML (`pynvml`, from nvidia-ml-py).

The discovery and health logic here, and the MIG operations in `mig`, are written against `MigLibrary`,
the slice of pynvml they call. The sim backend runs this same logic over a simulated library, so every path
the daemon relies on (name decoding, SM-count fallback, MIG-mode probing, the MIG call sequence, NVML error
codes) is exercised without a GPU as well.
pynvml is imported only when `NvmlBackend()` is built without a library, so this module imports cleanly
on machines with no driver.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection
from typing import Any

from vgpud._private.backend import geometry
from vgpud._private.backend.base import (
    BackendError,
    DeviceUse,
    DiscoveredGpu,
    MigInstance,
    MigMode,
    MigProfileInfo,
    ProcessGpuUse,
)
from vgpud._private.backend.mig import MigOps
from vgpud._private.backend.nvml_api import MigLibrary
from vgpud._private.backend.nvml_codes import (
    NVML_DEVICE_MIG_ENABLE,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    error_code,
)
from vgpud._private.backend.nvml_codes import nvml_str as _text
from vgpud._private.backend.nvml_device_use import device_use
from vgpud._private.backend.nvml_processes import gpu_processes, mismatch_errors

_UNSUPPORTED = frozenset({NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND})


def _load_pynvml() -> MigLibrary:
    try:
        import pynvml  # noqa: PLC0415 -- imported lazily so that hosts without a driver can import vgpud
    except ImportError as exc:
        raise BackendError(
            f"no NVIDIA driver/GPU found: cannot import pynvml ({exc}); use --sim SPEC to simulate GPUs"
        ) from None
    library: MigLibrary = pynvml
    return library


class NvmlBackend:
    """GPUs as NVML reports them; `library` is pynvml unless a test or the simulator passes its own."""

    def __init__(self, library: MigLibrary | None = None, *, name: str = "nvml") -> None:
        """Initialise NVML; BackendError when there is no driver or no library."""
        self.name = name
        self._nvml = library if library is not None else _load_pynvml()
        self._lock = threading.Lock()
        self._closed = False
        self._mig = MigOps(self._nvml)
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise BackendError(
                f"no NVIDIA driver/GPU found: nvmlInit failed: {exc}; use --sim SPEC to simulate GPUs"
            ) from None

    def discover(self) -> list[DiscoveredGpu]:
        """Every GPU on this host, in NVML index order."""
        self._check_open()
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise BackendError(f"cannot count GPUs: nvmlDeviceGetCount failed: {exc}") from None
        return [self._describe(index) for index in range(count)]

    def _describe(self, index: int) -> DiscoveredGpu:
        nvml = self._nvml
        step = "nvmlDeviceGetHandleByIndex"
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            step = "nvmlDeviceGetUUID"
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            step = "nvmlDeviceGetName"
            name = _text(nvml.nvmlDeviceGetName(handle))
            step = "nvmlDeviceGetMemoryInfo"
            memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        except nvml.NVMLError as exc:
            raise BackendError(f"GPU {index}: {step} failed: {exc}") from None
        model = geometry.model_for_product_name(name, memory)
        mig_capable, mig_enabled = self._mig_mode(index, handle, model)
        return DiscoveredGpu(
            uuid=uuid,
            index=index,
            model=model.key if model is not None else "unknown",
            name=name,
            memory_bytes=memory,
            sm_count=self._sm_count(handle, model),
            mig_capable=mig_capable,
            mig_enabled=mig_enabled,
        )

    def _sm_count(self, handle: Any, model: geometry.GpuModel | None) -> int:
        """The SM count: multiprocessorCount where NVML reports it, else the table's, else 0."""
        try:
            count = int(self._nvml.nvmlDeviceGetAttributes(handle).multiprocessorCount)
        except (self._nvml.NVMLError, AttributeError):
            # AttributeError: a pynvml too old to have nvmlDeviceGetAttributes.
            count = 0
        if count > 0:
            return count
        return model.sm_count if model is not None else 0

    def _mig_mode(self, index: int, handle: Any, model: geometry.GpuModel | None) -> tuple[bool, bool]:
        """(capable, enabled); NOT_SUPPORTED means the GPU has no MIG."""
        nvml = self._nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError as exc:
            if error_code(exc) in _UNSUPPORTED:
                return False, False
            raise BackendError(f"GPU {index}: nvmlDeviceGetMigMode failed: {exc}") from None
        except AttributeError:
            # A pynvml without MIG calls: trust the table for capability, assume MIG is off.
            return (model is not None and model.mig_capable), False
        return True, int(current) == NVML_DEVICE_MIG_ENABLE

    def healthy(self, uuid: str) -> bool:
        """False when NVML cannot query the GPU (fell off the bus, Xid-lost, ...).

        An unknown UUID is not "unhealthy" but a caller error: BackendError, as NVML's NOT_FOUND.
        """
        self._check_open()
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        except nvml.NVMLError as exc:
            if error_code(exc) in (NVML_ERROR_NOT_FOUND, NVML_ERROR_INVALID_ARGUMENT):
                raise BackendError(f"GPU {uuid} not found on this host (NVML: {exc})") from None
            return False
        try:
            nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError:
            return False
        return True

    def set_mig_mode(self, gpu_uuid: str, enabled: bool) -> MigMode:
        """Turn MIG on or off; BackendError says what to do when the GPU is busy or needs a reset."""
        self._check_open()
        return self._mig.set_mode(gpu_uuid, enabled)

    def mig_profiles(self, gpu_uuid: str) -> list[MigProfileInfo]:
        """The GPU's MIG profiles and placements as NVML reports them; MIG must be on."""
        self._check_open()
        return self._mig.profiles(gpu_uuid)

    def mig_instances(self, gpu_uuid: str) -> list[MigInstance]:
        """Every GPU instance that exists now (ours and others'), by start: rediscovery after a restart."""
        self._check_open()
        return self._mig.instances(gpu_uuid)

    def create_mig_instance(self, gpu_uuid: str, profile_id: int, start: int) -> MigInstance:
        """Create a GI at an explicit placement with one full-size CI; nothing is left behind on failure."""
        self._check_open()
        return self._mig.create(gpu_uuid, profile_id, start)

    def destroy_mig_instance(self, gpu_uuid: str, gpu_instance_id: int, *, owned: Collection[str]) -> None:
        """Destroy a GI and its CIs, only if all its MIG UUIDs are in `owned` and no process runs on it."""
        self._check_open()
        self._mig.destroy(gpu_uuid, gpu_instance_id, owned)

    def processes(self, gpu_uuids: Collection[str]) -> list[ProcessGpuUse] | None:
        """The processes on these GPUs with their memory and utilisation; BackendError when NVML fails."""
        self._check_open()
        found: list[ProcessGpuUse] = []
        for uuid in gpu_uuids:
            try:
                found.extend(gpu_processes(self._nvml, uuid))
            except (self._nvml.NVMLError, *mismatch_errors(self._nvml)) as exc:
                raise BackendError(f"cannot list the processes on GPU {uuid}: {exc}") from None
        return found

    def device_use(self, gpu_uuids: Collection[str]) -> dict[str, DeviceUse]:
        """Each GPU's used memory and utilisation as NVML reports them now; GPUs NVML cannot read are left out."""
        self._check_open()
        found = {uuid: device_use(self._nvml, uuid) for uuid in gpu_uuids}
        return {uuid: use for uuid, use in found.items() if use is not None}

    def close(self) -> None:
        """nvmlShutdown, once; later calls to discover/healthy raise BackendError.

        Never raises: it runs during a clean stop, where a failing shutdown must not turn into exit code 3.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"the {self.name} backend is closed (NVML: Uninitialized)")

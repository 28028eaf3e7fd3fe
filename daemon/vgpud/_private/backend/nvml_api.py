"""The slices of pynvml that vgpud calls, as Protocols: the real module and the simulator provide both."""

from __future__ import annotations

from typing import Any, Protocol


class NvmlLibrary(Protocol):
    """The pynvml functions vgpud calls; the real module and the simulator both provide them."""

    NVMLError: type[Exception]
    """Raised by every call; its `.value` is the NVML return code."""

    def nvmlInit(self) -> None:  # noqa: N802 -- pynvml's names
        """Load and initialise NVML."""
        ...

    def nvmlShutdown(self) -> None:  # noqa: N802 -- pynvml's names
        """Release NVML."""
        ...

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 -- pynvml's names
        """Number of GPUs."""
        ...

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:  # noqa: N802 -- pynvml's names
        """Opaque handle of GPU `index`."""
        ...

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:  # noqa: N802 -- pynvml's names
        """Opaque handle of the GPU with this UUID; NOT_FOUND when none."""
        ...

    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes:  # noqa: N802 -- pynvml's names
        """The "GPU-..." UUID (bytes from older pynvml)."""
        ...

    def nvmlDeviceGetName(self, handle: Any) -> str | bytes:  # noqa: N802 -- pynvml's names
        """Product name (bytes from older pynvml)."""
        ...

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:  # noqa: N802 -- pynvml's names
        """Struct with `total`, `free`, `used` in bytes."""
        ...

    def nvmlDeviceGetAttributes(self, handle: Any) -> Any:  # noqa: N802 -- pynvml's names
        """Struct with `multiprocessorCount`; NOT_SUPPORTED on some GPUs and drivers."""
        ...

    def nvmlDeviceGetMigMode(self, handle: Any) -> Any:  # noqa: N802 -- pynvml's names
        """[current, pending]; NOT_SUPPORTED on GPUs without MIG."""
        ...


class MigLibrary(NvmlLibrary, Protocol):
    """The pynvml MIG calls (names and calling convention as pynvml's; see gpu-slicing.md section 2).

    Calls that fill arrays or take a placement follow pynvml's ctypes convention; `mig_calls` wraps them
    into plain Python, so the simulator runs through that wrapping too.
    """

    c_nvmlGpuInstancePlacement_t: Any  # noqa: N815 -- pynvml's names
    """ctypes Structure with `start`, `size` (memory slices): element type of placement arrays."""
    c_nvmlGpuInstance_t: Any  # noqa: N815 -- pynvml's names
    """ctypes type of a GPU-instance handle: element type of `nvmlDeviceGetGpuInstances` arrays."""

    def nvmlDeviceSetMigMode(self, device: Any, mode: int, /) -> int:  # noqa: N802 -- pynvml's names
        """Request MIG on (1) or off (0); returns the activation status (0, or IN_USE / RESET_REQUIRED)."""
        ...

    def nvmlDeviceGetGpuInstanceProfileInfo(self, device: Any, profile: int, /) -> Any:  # noqa: N802 -- pynvml's names
        """GI profile by NVML index: `.id .sliceCount .instanceCount .multiprocessorCount .memorySizeMB .name`."""
        ...

    def nvmlDeviceGetGpuInstancePossiblePlacements(  # noqa: N802 -- pynvml's names
        self, device: Any, profile_id: int, placements: Any, count: Any, /
    ) -> int:
        """Every placement of a profile; `placements` None asks only for the count (written via `count`)."""
        ...

    def nvmlDeviceCreateGpuInstanceWithPlacement(  # noqa: N802 -- pynvml's names
        self, device: Any, profile_id: int, placement: Any, /
    ) -> Any:
        """Create a GI at a pointer to a placement struct; the GI handle."""
        ...

    def nvmlDeviceGetGpuInstances(  # noqa: N802 -- pynvml's names
        self, device: Any, profile_id: int, instances: Any, count: Any, /
    ) -> int:
        """Fill `instances` (sized to the profile's instanceCount) with the live GIs of a profile."""
        ...

    def nvmlDeviceGetGpuInstanceById(self, device: Any, gpu_instance_id: int, /) -> Any:  # noqa: N802 -- pynvml's names
        """The GI handle with this ID; NOT_FOUND when there is none."""
        ...

    def nvmlGpuInstanceGetInfo(self, gpu_instance: Any, /) -> Any:  # noqa: N802 -- pynvml's names
        """`.id .profileId .placement.start .placement.size` of a GI."""
        ...

    def nvmlGpuInstanceDestroy(self, gpu_instance: Any, /) -> int:  # noqa: N802 -- pynvml's names
        """Destroy a GI; IN_USE while compute instances or processes are on it."""
        ...

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(  # noqa: N802 -- pynvml's names
        self, gpu_instance: Any, profile: int, engine_profile: int, /
    ) -> Any:
        """CI profile by NVML index within a GI: `.id .sliceCount .instanceCount .multiprocessorCount`."""
        ...

    def nvmlGpuInstanceCreateComputeInstance(self, gpu_instance: Any, profile_id: int, /) -> Any:  # noqa: N802 -- pynvml's names
        """Create a CI in a GI; the CI handle."""
        ...

    def nvmlGpuInstanceGetComputeInstanceById(self, gpu_instance: Any, compute_instance_id: int, /) -> Any:  # noqa: N802 -- pynvml's names
        """The CI handle with this ID inside a GI; NOT_FOUND when there is none."""
        ...

    def nvmlComputeInstanceGetInfo(self, compute_instance: Any, /) -> Any:  # noqa: N802 -- pynvml's names
        """`.id .profileId .placement` of a CI."""
        ...

    def nvmlComputeInstanceDestroy(self, compute_instance: Any, /) -> int:  # noqa: N802 -- pynvml's names
        """Destroy a CI; IN_USE while processes are on it."""
        ...

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any, /) -> int:  # noqa: N802 -- pynvml's names
        """How many MIG device indexes to probe with nvmlDeviceGetMigDeviceHandleByIndex."""
        ...

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int, /) -> Any:  # noqa: N802 -- pynvml's names
        """The MIG device (one per CI) at an index; NOT_FOUND for an empty index."""
        ...

    def nvmlDeviceGetGpuInstanceId(self, device: Any, /) -> int:  # noqa: N802 -- pynvml's names
        """GI ID of a MIG device handle."""
        ...

    def nvmlDeviceGetComputeInstanceId(self, device: Any, /) -> int:  # noqa: N802 -- pynvml's names
        """CI ID of a MIG device handle."""
        ...

    def nvmlDeviceGetComputeRunningProcesses(self, device: Any, /) -> list[Any]:  # noqa: N802 -- pynvml's names
        """Processes with a compute context (`.pid`); on a MIG handle, those inside that instance."""
        ...

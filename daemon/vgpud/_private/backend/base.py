"""What the daemon needs from a GPU backend: discovery, health and MIG, the same for sim and nvml."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol


class BackendError(Exception):
    """The backend could not do what was asked; the message names the GPU and the cause."""


@dataclass(frozen=True, slots=True)
class DiscoveredGpu:
    """A physical GPU as the backend sees it at startup."""

    uuid: str
    """Driver UUID, "GPU-xxxxxxxx-..." (what CUDA_VISIBLE_DEVICES takes)."""
    index: int
    """NVML index on this host."""
    model: str
    """Model key from the geometry table, e.g. "h100-80gb"; "unknown" when the table has none."""
    name: str
    """Product name as the driver reports it, e.g. "NVIDIA H100 80GB HBM3"."""
    memory_bytes: int
    sm_count: int
    mig_capable: bool
    mig_enabled: bool


@dataclass(frozen=True, slots=True)
class MigMode:
    """A GPU's MIG mode after a change, as NVML reports it."""

    current: bool
    """MIG is on now."""
    pending: bool
    """MIG will be on after the next GPU reset (differs from `current` only while a reset is due)."""


@dataclass(frozen=True, slots=True)
class MigProfileInfo:
    """A GPU-instance profile as NVML reports it on this GPU (not the geometry table)."""

    id: int
    """Profile ID (`info.id`): what create calls take."""
    name: str
    """Name without the "MIG " prefix, e.g. "3g.40gb"."""
    nvml_index: int
    """The NVML_GPU_INSTANCE_PROFILE_* index it was read with."""
    compute_slices: int
    """`sliceCount`: compute slices of one instance."""
    memory_slices: int
    """Placement size in memory slices."""
    instance_count: int
    """`instanceCount`: most instances of this profile at once on an empty GPU."""
    memory_bytes: int
    """`memorySizeMB` in bytes."""
    sm_count: int
    """`multiprocessorCount` of one instance."""
    starts: tuple[int, ...]
    """Memory slices where an instance may start (possible placements)."""

    def free_starts(self, existing: Iterable[MigInstance]) -> list[int]:
        """Starts whose span overlaps none of `existing` (instance counts aside)."""
        taken = [(i.start, i.start + i.size) for i in existing]
        return [s for s in self.starts if all(s + self.memory_slices <= a or b <= s for a, b in taken)]


@dataclass(frozen=True, slots=True)
class MigInstance:
    """A MIG GPU instance and its compute instance: what a MIG slice runs on."""

    gpu_uuid: str
    """The physical GPU ("GPU-...")."""
    gpu_instance_id: int
    """GI ID, assigned by the driver."""
    compute_instance_id: int | None
    """CI ID inside the GI (the lowest, if there are several); None for a GI without a CI."""
    profile_id: int
    """GI profile ID."""
    profile_name: str
    """GI profile name, e.g. "3g.40gb"."""
    start: int
    """First memory slice of the placement."""
    size: int
    """Memory slices of the placement."""
    mig_uuid: str | None
    """"MIG-..." UUID for CUDA_VISIBLE_DEVICES; None for a GI without a CI."""
    memory_bytes: int
    """Instance memory."""
    sm_count: int
    """Instance SMs."""


@dataclass(frozen=True, slots=True)
class ProcessGpuUse:
    """One process on one GPU (or MIG device) as NVML saw it."""

    pid: int
    gpu_uuid: str
    """The physical GPU."""
    mig_uuid: str
    """The MIG device the process runs on; empty without MIG."""
    memory_bytes: int | None
    """GPU memory the process holds; None where NVML cannot tell (e.g. under WDDM)."""
    sm_percent: int | None
    """Share of the last second the process had kernels running, 0..100; None where not supported (MIG)."""


@dataclass(frozen=True, slots=True)
class DeviceUse:
    """One whole GPU as NVML sees it now: what every process on it uses, vgpu's or not."""

    memory_used_bytes: int | None
    """`nvmlDeviceGetMemoryInfo().used`; None where NVML cannot say."""
    utilization: float | None
    """Share of the last sample period a kernel ran (0..1); None where not supported (a GPU in MIG mode)."""


class GpuBackend(Protocol):
    """Blocking calls (NVML is synchronous): the daemon runs them in a worker thread."""

    name: str
    """"sim" or "nvml"."""

    def discover(self) -> list[DiscoveredGpu]:
        """Every GPU on this host, in index order."""
        ...

    def healthy(self, uuid: str) -> bool:
        """False when the GPU fell off the bus or reports an error state."""
        ...

    def close(self) -> None:
        """Release backend resources (nvmlShutdown)."""
        ...

    def set_mig_mode(self, gpu_uuid: str, enabled: bool) -> MigMode:
        """Turn MIG on or off; BackendError says what to do when the GPU is busy or needs a reset."""
        ...

    def mig_profiles(self, gpu_uuid: str) -> list[MigProfileInfo]:
        """The GPU's MIG profiles and placements as NVML reports them; MIG must be on."""
        ...

    def mig_instances(self, gpu_uuid: str) -> list[MigInstance]:
        """Every GPU instance that exists now (ours and others'), by start: rediscovery after a restart."""
        ...

    def create_mig_instance(self, gpu_uuid: str, profile_id: int, start: int) -> MigInstance:
        """Create a GI at an explicit placement with one full-size CI; nothing is left behind on failure."""
        ...

    def destroy_mig_instance(self, gpu_uuid: str, gpu_instance_id: int, *, owned: Collection[str]) -> None:
        """Destroy a GI and its CIs, only if all its MIG UUIDs are in `owned` and no process runs on it."""
        ...

    def processes(self, gpu_uuids: Collection[str]) -> list[ProcessGpuUse] | None:
        """The processes on these GPUs (host pids, memory, utilisation); None when the backend cannot see them."""
        ...

    def device_use(self, gpu_uuids: Collection[str]) -> dict[str, DeviceUse]:
        """Each GPU's measured memory and utilisation (those NVML cannot read left out; empty on simulated GPUs)."""
        ...

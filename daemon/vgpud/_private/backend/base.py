"""What the daemon needs from a GPU backend: discovery and health, the same for sim and nvml."""

from __future__ import annotations

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

"""What placement works on and answers with: GPU views, placements, refusals (shared by every placement module)."""

from __future__ import annotations

from dataclasses import dataclass

from vgpu._private.units import MILLI_PER_GPU
from vgpud._private.core.model import Claim, GpuRecord, GpuState


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU as placement sees it: facts, current state, and whether new work may land there."""

    record: GpuRecord
    state: GpuState
    schedulable: bool = True
    """False when the GPU is unhealthy or its node is draining or down."""
    switchable: bool = False
    """An idle MIG-capable GPU the pool may switch between shared and MIG mode for a waiting request (auto mode)."""

    @property
    def free_memory(self) -> int:
        """Bytes not claimed."""
        return self.record.memory_bytes - self.state.memory_claimed

    @property
    def free_compute(self) -> int:
        """Milli-GPU not claimed."""
        return MILLI_PER_GPU - self.state.compute_claimed


@dataclass(frozen=True, slots=True)
class Placement:
    """Where each slice goes: one (gpu, claim) pair per slice."""

    assignments: tuple[tuple[GpuView, Claim], ...]


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """Why nothing was placed. `never` means no GPU could hold the request even when empty."""

    never: bool
    message: str

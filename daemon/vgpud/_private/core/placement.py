"""Best-fit placement of shared and whole-GPU slices: state in, decision out, no I/O.

Best fit keeps large holes whole: a request goes to the GPU it leaves the least room on, so a later big
request still finds an empty GPU. A request for several slices takes distinct GPUs, all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vgpu._private.units import MILLI_PER_GPU, format_compute, format_memory
from vgpud._private.core.model import Claim, GpuMode, GpuRecord, GpuState, Isolation, ShapeRequest


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU as placement sees it: facts, current state, and whether new work may land there."""

    record: GpuRecord
    state: GpuState
    schedulable: bool = True
    """False when the GPU is unhealthy or its node is draining or down."""

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


def _accepts(view: GpuView, request: ShapeRequest) -> bool:
    """Mode and model rules, ignoring current use."""
    if request.gpu_models and view.record.model not in request.gpu_models:
        return False
    if request.isolation is Isolation.SHARED:
        return view.state.mode is GpuMode.SHARED and request.memory_bytes <= view.record.memory_bytes
    if request.isolation is Isolation.WHOLE:
        return view.state.mode in (GpuMode.SHARED, GpuMode.EXCLUSIVE)
    return False


def _claim_for(view: GpuView, request: ShapeRequest, lease_id: str) -> Claim | None:
    """The claim this request would make on `view` now, or None when it does not fit."""
    if request.isolation is Isolation.WHOLE:
        if view.state.claims:
            return None
        return Claim(lease_id, view.record.memory_bytes, MILLI_PER_GPU, Isolation.WHOLE)
    if any(c.isolation is Isolation.WHOLE for c in view.state.claims):
        return None
    if view.free_memory < request.memory_bytes or view.free_compute < request.compute_milli:
        return None
    return Claim(lease_id, request.memory_bytes, request.compute_milli, Isolation.SHARED)


def leftover(view: GpuView, claim: Claim) -> float:
    """Room left after the claim, memory and compute weighted equally (smaller is a tighter fit)."""
    memory_left = (view.free_memory - claim.memory_bytes) / view.record.memory_bytes
    compute_left = (view.free_compute - claim.compute_milli) / MILLI_PER_GPU
    return memory_left + compute_left


def place(request: ShapeRequest, gpus: Sequence[GpuView], lease_id: str) -> Placement | Unplaceable:
    """Best-fit `request.count` slices on distinct GPUs, or say why that is impossible."""
    eligible = [g for g in gpus if _accepts(g, request)]
    if len(eligible) < request.count:
        return Unplaceable(never=True, message=_never_message(request, gpus, eligible))
    candidates: list[tuple[float, int, str, GpuView, Claim]] = []
    for view in eligible:
        if not view.schedulable:
            continue
        claim = _claim_for(view, request, lease_id)
        if claim is not None:
            candidates.append((leftover(view, claim), view.record.index, view.record.uuid, view, claim))
    if len(candidates) < request.count:
        return Unplaceable(never=False, message=_busy_message(request, eligible, len(candidates)))
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    return Placement(assignments=tuple((c[3], c[4]) for c in candidates[: request.count]))


def _describe(request: ShapeRequest) -> str:
    if request.isolation is Isolation.WHOLE:
        shape = "a whole GPU"
    else:
        shape = f"{format_memory(request.memory_bytes)} and {format_compute(request.compute_milli)} GPU"
    count = f"{request.count} x " if request.count > 1 else ""
    models = f" of model {'/'.join(request.gpu_models)}" if request.gpu_models else ""
    return f"{count}{shape}{models}"


def _never_message(request: ShapeRequest, gpus: Sequence[GpuView], eligible: Sequence[GpuView]) -> str:
    if not gpus:
        return "this node has no GPUs registered"
    if request.isolation is Isolation.SHARED:
        shared = [g for g in gpus if g.state.mode is GpuMode.SHARED]
        if not shared:
            return "no GPU here is in shared mode (vgpuctl gpu mode GPU shared)"
        largest = max(g.record.memory_bytes for g in shared)
        if request.memory_bytes > largest:
            return (
                f"{format_memory(request.memory_bytes)} is more than the largest shared GPU here holds "
                f"({format_memory(largest)})"
            )
    return f"{_describe(request)} needs {request.count} eligible GPUs; this node has {len(eligible)}"


def _busy_message(request: ShapeRequest, eligible: Sequence[GpuView], fitting: int) -> str:
    open_gpus = [g for g in eligible if g.schedulable]
    if not open_gpus:
        return f"no capacity for {_describe(request)}: every eligible GPU is draining or unhealthy"
    best = max(open_gpus, key=lambda g: (g.free_memory, g.free_compute))
    closed = len(eligible) - len(open_gpus)
    skipped = f"; {closed} more GPU(s) draining or unhealthy" if closed else ""
    return (
        f"no capacity for {_describe(request)} ({fitting} of {request.count} GPUs fit now); "
        f"largest free slice: {format_memory(max(best.free_memory, 0))} and "
        f"{format_compute(max(best.free_compute, 0))} GPU on {best.record.uuid} ({best.record.model}){skipped}"
    )

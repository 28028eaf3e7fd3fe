"""Best-fit placement of shared and whole-GPU slices: state in, decision out, no I/O.

Best fit keeps large holes whole: a request goes to the GPU it leaves the least room on, so a later big
request still finds an empty GPU. A request for several slices takes distinct GPUs, all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vgpu._private.units import MILLI_PER_GPU, format_compute, format_memory
from vgpud._private.core.mig_slices import place_mig
from vgpud._private.core.model import Claim, GpuMode, Isolation, ShapeRequest
from vgpud._private.core.slice_views import GpuView, Placement, Unplaceable

if TYPE_CHECKING:  # placement_policy imports leftover from here: a runtime import would be circular
    from vgpud._private.core.placement_policy import PlacementPolicy

__all__ = ["GpuView", "Placement", "Unplaceable", "leftover", "place"]


def _accepts(view: GpuView, request: ShapeRequest) -> bool:
    """Mode and model rules, ignoring current use."""
    if request.gpu_models and view.record.model not in request.gpu_models:
        return False
    if request.isolation is Isolation.SHARED:
        shared = view.state.mode is GpuMode.SHARED or view.switchable
        return shared and request.memory_bytes <= view.record.memory_bytes
    if request.isolation is Isolation.WHOLE:
        return view.state.mode in (GpuMode.SHARED, GpuMode.EXCLUSIVE) or view.switchable
    return False


def proportional_compute(view: GpuView, memory_bytes: int) -> int:
    """The compute share of a slice that gave none: its fraction of the GPU's memory, rounded up."""
    return max(1, min(MILLI_PER_GPU, -(-memory_bytes * MILLI_PER_GPU // max(1, view.record.memory_bytes))))


def _claim_for(view: GpuView, request: ShapeRequest, lease_id: str) -> Claim | None:
    """The claim this request would make on `view` now, or None when it does not fit."""
    if view.record.mig_enabled or view.state.mig:
        return None  # the hardware is (still) in MIG mode: its node daemon has not switched it back yet
    if request.isolation is Isolation.WHOLE:
        if view.state.claims:
            return None
        return Claim(lease_id, view.record.memory_bytes, MILLI_PER_GPU, Isolation.WHOLE)
    if any(c.isolation is Isolation.WHOLE for c in view.state.claims):
        return None
    compute = request.compute_milli or proportional_compute(view, request.memory_bytes)
    if view.free_memory < request.memory_bytes or view.free_compute < compute:
        return None
    return Claim(lease_id, request.memory_bytes, compute, Isolation.SHARED)


def leftover(view: GpuView, claim: Claim) -> float:
    """Room left after the claim, memory and compute weighted equally (smaller is a tighter fit)."""
    memory_left = (view.free_memory - claim.memory_bytes) / view.record.memory_bytes
    compute_left = (view.free_compute - claim.compute_milli) / MILLI_PER_GPU
    return memory_left + compute_left


def place(
    request: ShapeRequest,
    gpus: Sequence[GpuView],
    lease_id: str,
    *,
    policy: PlacementPolicy | None = None,
) -> Placement | Unplaceable:
    """Place `request.count` slices, or say why that is impossible.

    MIG requests go to mig_slices; a request that named no isolation (`flexible`) takes a MIG instance
    when one holding at most 1.5x the asked memory fits (hardware isolation for little waste), else a
    shared slice. `policy` ranks the GPUs a shared or whole slice fits (default: best fit by `leftover`).
    """
    if request.isolation is Isolation.MIG:
        return place_mig(request, gpus, lease_id)
    shared = _place_shared(request, gpus, lease_id, policy)
    if not request.flexible:
        return shared
    mig = place_mig(request, gpus, lease_id)
    if isinstance(mig, Placement) and (isinstance(shared, Unplaceable) or _modest(request, mig)):
        return mig
    if isinstance(shared, Placement):
        return shared
    if isinstance(mig, Placement):
        return mig
    never = shared.never and mig.never
    chosen = shared if shared.never == never else mig
    return Unplaceable(never=never, message=chosen.message)


def _modest(request: ShapeRequest, mig: Placement) -> bool:
    """Whether the MIG instances hold at most 1.5x the asked memory (hardware isolation worth the rest)."""
    return all(2 * claim.memory_bytes <= 3 * request.memory_bytes for _, claim in mig.assignments)


def _place_shared(
    request: ShapeRequest, gpus: Sequence[GpuView], lease_id: str, policy: PlacementPolicy | None = None
) -> Placement | Unplaceable:
    """Best-fit (or `policy`-ranked) `request.count` slices on distinct GPUs, or say why that is impossible."""
    eligible = [g for g in gpus if _accepts(g, request)]
    if len(eligible) < request.count:
        return Unplaceable(never=True, message=_never_message(request, gpus, eligible))
    candidates: list[tuple[tuple[float, ...], int, str, GpuView, Claim]] = []
    for view in eligible:
        if not view.schedulable:
            continue
        claim = _claim_for(view, request, lease_id)
        if claim is not None:
            score = (leftover(view, claim),) if policy is None else policy.gpu_score(view, claim, gpus)
            candidates.append((score, view.record.index, view.record.uuid, view, claim))
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

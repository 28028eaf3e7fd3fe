"""Preemption and resizing of live leases: PREEMPT, acknowledge (SUSPENDED), resume, resize. Each one txn.

A preempted lease keeps its slices until its client acknowledges (it has checkpointed) or its deadline
passes (the leader then revokes it). Acknowledging frees the slices at once and leaves the lease
SUSPENDED: it keeps its id, token and liveness, waits in the queue at its priority, and the leader resumes
it (maybe on another GPU or node) by writing new slices. Resizing changes an elastic lease's compute share
in place. A resume or a growth stays within the lease's project limit (project_gate.py).
"""

from __future__ import annotations

from dataclasses import replace

import structlog

from vgpu._private import reasons
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.lease_state import check_transition
from vgpud._private.core.model import Claim, Isolation, LeaseState
from vgpud._private.core.placement import GpuView, Placement, Unplaceable
from vgpud._private.core.queue_order import asked, place_local, place_request
from vgpud._private.grants.allocator import Allocator
from vgpud._private.grants.granted_slices import slices_of
from vgpud._private.grants.project_gate import grown_share, more_slices_within, within_limit
from vgpud._private.grants.write_batch import Overlay
from vgpud._private.refusal import Refusal

log = structlog.get_logger("vgpud.lease_transitions")

_PREEMPTABLE_STATES = (LeaseState.GRANTED, LeaseState.RESIZING)


class LeaseTransitions:
    """The writes that move a live lease through PREEMPTING, SUSPENDED and back, or resize it."""

    def __init__(self, allocator: Allocator) -> None:
        self._allocator = allocator
        self._clock = allocator.clock

    async def preempt(self, lease_id: str, *, reason: str, grace_s: float) -> LeaseRecord:
        """Ask the lease to checkpoint and yield within `grace_s`; a lease already preempting is returned."""
        now = self._clock()

        def build(overlay: Overlay) -> LeaseRecord:
            lease = _live(overlay, lease_id)
            if lease.state in (LeaseState.PREEMPTING, LeaseState.SUSPENDED):
                return lease
            if lease.state not in _PREEMPTABLE_STATES:
                raise Refusal(reasons.NOT_PREEMPTING, f"lease {lease_id} is {lease.state.value}; nothing to preempt")
            check_transition(lease.state, LeaseState.PREEMPTING)
            asked = replace(
                lease,
                state=LeaseState.PREEMPTING,
                preempt_deadline=now + grace_s,
                preempt_reason=reason,
                steps=lease.step("preempt", at=now),
                event="",
            )
            overlay.put_lease(asked)
            return asked

        record = await self._allocator.commit(build)
        log.info("lease asked to yield", lease=lease_id, grace_s=grace_s, reason=reason)
        return record

    async def acknowledge(self, lease_id: str) -> LeaseRecord:
        """The client checkpointed: free its slices now and suspend it (idempotent once suspended)."""
        now = self._clock()

        def build(overlay: Overlay) -> LeaseRecord:
            lease = _live(overlay, lease_id)
            if lease.state is LeaseState.SUSPENDED:
                return lease
            if lease.state is not LeaseState.PREEMPTING:
                raise Refusal(
                    reasons.NOT_PREEMPTING,
                    f"lease {lease_id} is {lease.state.value}: only a lease asked to yield (PREEMPT) can acknowledge",
                )
            for uuid in sorted({s.gpu_uuid for s in lease.slices}):
                overlay.put_gpu_state(uuid, overlay.gpu_state(uuid).without_lease(lease_id))
            suspended = replace(
                lease,
                state=LeaseState.SUSPENDED,
                slices=(),
                preempt_deadline=0.0,
                preemptions=lease.preemptions + 1,
                steps=lease.step("checkpointed", "suspended", at=now),
                idle_since=0.0,
                event="",
                warning="",  # a watchdog warning was about the slices it no longer holds
                warning_deadline=0.0,
            )
            overlay.put_lease(suspended)
            return suspended

        record = await self._allocator.commit(build)
        log.info("lease suspended", lease=lease_id)
        return record

    async def resume(self, lease_id: str) -> LeaseRecord:
        """Grant a suspended lease new slices (leader only: its allocator is fenced). Refusal if none fit."""
        allocator = self._allocator
        now = self._clock()

        def build(overlay: Overlay) -> LeaseRecord:
            lease = _live(overlay, lease_id)
            if lease.state is not LeaseState.SUSPENDED:
                return lease
            target = lease.target_node
            for name in [target] if target else allocator.live_nodes():
                overlay.node_config(name, guard=True)
            nodes = allocator.candidates_by_node(target, overlay)
            span = lease.gang and lease.any_node
            policy = allocator.placement_policy()
            result = within_limit(
                overlay,
                lease.project,
                lease.request,
                lambda r: place_request(r, nodes, lease_id, span=span, policy=policy),
            )
            if isinstance(result, Unplaceable):
                raise Refusal(reasons.NEVER_FITS if result.never else reasons.NO_CAPACITY, result.message)
            for view, claim in result.assignments:
                overlay.put_gpu_state(view.record.uuid, overlay.gpu_state(view.record.uuid).with_claim(claim))
            resumed = replace(
                lease,
                state=LeaseState.GRANTED,
                slices=slices_of(result, overlay),
                steps=lease.step("resumed", at=now),
                event="resumed",
            )
            overlay.put_lease(resumed)
            return resumed

        record = await allocator.commit(build)
        log.info("lease resumed", lease=lease_id, nodes=sorted({s.node for s in record.slices}))
        return record

    async def resize(self, lease_id: str, compute_milli: int) -> LeaseRecord:
        """Set every shared slice of an elastic lease to `compute_milli` (within its min..max), in place."""
        now = self._clock()

        def build(overlay: Overlay) -> LeaseRecord:
            lease = _live(overlay, lease_id)
            if lease.state is not LeaseState.GRANTED:
                return lease
            low, high = lease.request.compute_milli, max(lease.request.compute_milli_max, lease.request.compute_milli)
            shares = [s.compute_milli for s in lease.slices if s.isolation is Isolation.SHARED]
            target = grown_share(overlay, lease, max(low, min(high, compute_milli)), shares)
            slices = []
            for s in lease.slices:
                if s.isolation is not Isolation.SHARED or s.compute_milli == target:
                    slices.append(s)
                    continue
                state = overlay.gpu_state(s.gpu_uuid)
                free = 1000 - state.compute_claimed + s.compute_milli
                if target > free:
                    raise Refusal(reasons.NO_CAPACITY, f"GPU {s.gpu_uuid} has {free} milli-GPU free, not {target}")
                claims = tuple(_resized(c, lease_id, target) for c in state.claims)
                overlay.put_gpu_state(s.gpu_uuid, replace(state, claims=claims))
                slices.append(replace(s, compute_milli=target))
            if tuple(slices) == lease.slices:
                return lease
            resized = replace(lease, slices=tuple(slices), steps=lease.step("resized", at=now), event="resized")
            overlay.put_lease(resized)
            return resized

        return await self._allocator.commit(build)

    async def resize_count(self, lease_id: str, count: int) -> LeaseRecord:
        """Give back slices down to `count`, or add slices toward it (as many as fit, at least one)."""
        allocator = self._allocator
        now = self._clock()

        def build(overlay: Overlay) -> LeaseRecord:
            lease = _live(overlay, lease_id)
            if lease.state is not LeaseState.GRANTED:
                return lease
            target = max(lease.request.count, min(max(lease.request.count_max, lease.request.count), count))
            have = len(lease.slices)
            if target == have:
                return lease
            if target < have:
                slices = _fewer_slices(overlay, lease, target)
            else:
                wanted = more_slices_within(overlay, lease, target - have, asked(replace(lease.request, count=1)))
                added = _more_slices(allocator, overlay, lease, wanted)
                if not added:
                    raise Refusal(reasons.NO_CAPACITY, f"no GPU free beside lease {lease_id} to grow it")
                slices = (*lease.slices, *slices_of(Placement(tuple(added)), overlay))
            resized = replace(lease, slices=slices, steps=lease.step("resized", at=now), event="resized")
            overlay.put_lease(resized)
            return resized

        return await allocator.commit(build)


def _more_slices(
    allocator: Allocator, overlay: Overlay, lease: LeaseRecord, wanted: int
) -> list[tuple[GpuView, Claim]]:
    """Up to `wanted` more slices for a count-elastic lease, on GPUs it does not use yet.

    They go on its node (any node for a gang allowed to span), each placed like the lease's own request.
    """
    used = {s.gpu_uuid for s in lease.slices}
    names = allocator.live_nodes() if lease.gang and lease.any_node else sorted({s.node for s in lease.slices})
    views = [v for n in names for v in allocator.candidates(n, overlay) if v.record.uuid not in used]
    one = replace(lease.request, count=1, count_max=0)
    out: list[tuple[GpuView, Claim]] = []
    policy = allocator.placement_policy()
    while len(out) < wanted:
        result = place_local(one, views, lease.id, policy)
        if isinstance(result, Unplaceable):
            break
        ((view, claim),) = result.assignments
        overlay.put_gpu_state(view.record.uuid, overlay.gpu_state(view.record.uuid).with_claim(claim))
        out.append((view, claim))
        views = [v for v in views if v.record.uuid != view.record.uuid]
    return out


def _resized(claim: Claim, lease_id: str, compute_milli: int) -> Claim:
    """The claim with a new compute share if it is one of the lease's shared claims."""
    if claim.lease_id != lease_id or claim.isolation is not Isolation.SHARED:
        return claim
    return replace(claim, compute_milli=compute_milli)


def _fewer_slices(overlay: Overlay, lease: LeaseRecord, keep: int) -> tuple[SliceRecord, ...]:
    """The lease's first `keep` slices; the claims of the rest are given back."""
    for s in lease.slices[keep:]:
        overlay.put_gpu_state(s.gpu_uuid, overlay.gpu_state(s.gpu_uuid).without_lease(lease.id))
    return lease.slices[:keep]


def _live(overlay: Overlay, lease_id: str) -> LeaseRecord:
    lease = overlay.lease(lease_id)
    if lease is None:
        raise Refusal(reasons.LEASE_NOT_FOUND, f"no lease {lease_id!r}")
    if lease.state.ended:
        raise Refusal(reasons.LEASE_ENDED, f"lease {lease_id} has ended ({lease.end_reason})")
    return lease

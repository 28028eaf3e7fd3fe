"""Which waiting requests the leader grants now: state in, decisions out, no I/O.

Requests are taken in arrival order. A request that cannot be placed yet holds its place and blocks
every later request that could use any of the same nodes (no backfill onto capacity it waits for), so a
big request is never starved by a stream of small ones; requests for other nodes go ahead. A fail-fast
request never holds a place: it is granted if it fits now (even past waiters) and refused otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from vgpu._private import reasons
from vgpud._private.core.cluster_placement import place_on_nodes
from vgpud._private.core.model import GpuState, ShapeRequest
from vgpud._private.core.placement import GpuView, Placement, Unplaceable


@dataclass(frozen=True, slots=True)
class Waiting:
    """One queued request as ordering needs it."""

    lease_id: str
    request: ShapeRequest
    target_node: str
    """Empty: any node."""
    span: bool
    wait: bool


@dataclass(frozen=True, slots=True)
class Admit:
    """Grant this request with this placement."""

    lease_id: str
    placement: Placement


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer this request with a refusal."""

    lease_id: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep this request waiting, and why (shown to its client)."""

    lease_id: str
    message: str


Decision = Admit | Reject | Hold


def decide(
    queue: Sequence[Waiting],
    nodes: Mapping[str, Sequence[GpuView]],
    known_nodes: frozenset[str] = frozenset(),
) -> list[Decision]:
    """One decision per queued request, in queue order.

    `nodes` are the live nodes with their GPUs (draining ones included, their GPUs unschedulable);
    `known_nodes` are nodes with GPUs registered but not up, so a request naming one is told it is down.
    Admitted placements are applied to a working copy, so later decisions see the capacity taken.
    """
    working = {name: list(views) for name, views in nodes.items()}
    blocked: dict[str, str] = {}
    out: list[Decision] = []
    for entry in queue:
        if entry.target_node and entry.target_node not in working:
            if entry.target_node in known_nodes:
                out.append(Reject(entry.lease_id, reasons.NODE_DOWN, f"node {entry.target_node} is down"))
            else:
                out.append(Reject(entry.lease_id, reasons.NODE_NOT_FOUND, f"no node {entry.target_node!r} in the pool"))
            continue
        candidates = [entry.target_node] if entry.target_node else sorted(working)
        ahead = [blocked[n] for n in candidates if n in blocked]
        if ahead and entry.wait:
            out.append(Hold(entry.lease_id, f"waiting behind {ahead[0]}"))
            for name in candidates:
                blocked.setdefault(name, ahead[0])
            continue
        result = place_on_nodes(entry.request, {n: working[n] for n in candidates}, entry.lease_id, span=entry.span)
        if isinstance(result, Unplaceable):
            if result.never:
                out.append(Reject(entry.lease_id, reasons.NEVER_FITS, result.message))
            elif not entry.wait:
                out.append(Reject(entry.lease_id, reasons.NO_CAPACITY, result.message))
            else:
                out.append(Hold(entry.lease_id, result.message))
                for name in candidates:
                    blocked.setdefault(name, f"request {entry.lease_id}")
            continue
        out.append(Admit(entry.lease_id, result))
        _take(working, result)
    return out


def _take(working: dict[str, list[GpuView]], placement: Placement) -> None:
    """Apply an admitted placement's claims to the working copy."""
    for view, claim in placement.assignments:
        views = working[view.record.node]
        for i, current in enumerate(views):
            if current.record.uuid == view.record.uuid:
                state: GpuState = current.state.with_claim(claim)
                views[i] = replace(current, state=state)
                break

"""Placement across the nodes of a pool: state in, decision out, no I/O.

A request for several slices lands on one node when any node can hold it all (its processes can then
share a host); only a gang allowed to span nodes is spread, and then best fit picks the tightest GPUs
of the whole pool. Among nodes, the one the request fits most tightly wins, keeping big holes whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vgpud._private.core.model import ShapeRequest
from vgpud._private.core.placement import GpuView, Placement, Unplaceable, leftover, place
from vgpud._private.core.placement_policy import PlacementPolicy


def _tightness(placement: Placement) -> float:
    """Room the placement leaves on the GPUs it uses (smaller is tighter)."""
    return sum(leftover(view, claim) for view, claim in placement.assignments)


def place_on_nodes(
    request: ShapeRequest,
    nodes: Mapping[str, Sequence[GpuView]],
    lease_id: str,
    *,
    span: bool = False,
    policy: PlacementPolicy | None = None,
) -> Placement | Unplaceable:
    """Place on the single node that fits tightest; with `span`, over several nodes when none fits alone.

    `nodes` maps each candidate node to its GPUs (unschedulable ones included, so "never fits" is told
    apart from "busy"). `policy` ranks GPUs and nodes instead of best fit (the span fallback stays best fit).
    """
    if not nodes:
        return Unplaceable(never=True, message="no node of the pool is up")
    best: tuple[tuple[float, ...], str, Placement] | None = None
    outcomes: list[Unplaceable] = []
    for name in sorted(nodes):
        result = place(request, nodes[name], lease_id, policy=policy)
        if isinstance(result, Unplaceable):
            outcomes.append(result)
            continue
        score = (_tightness(result),) if policy is None else policy.node_score(nodes[name], result)
        if best is None or score < best[0]:
            best = (score, name, result)
    if best is not None:
        return best[2]
    if span and request.count > 1:
        spread = place(request, [view for name in sorted(nodes) for view in nodes[name]], lease_id)
        if isinstance(spread, Placement):
            return spread
        prefix = "the whole pool cannot hold it: " if spread.never else ""
        return Unplaceable(never=spread.never, message=f"{prefix}{spread.message}")
    return _why_not(request, outcomes, several=len(nodes) > 1)


def _why_not(request: ShapeRequest, outcomes: list[Unplaceable], *, several: bool) -> Unplaceable:
    """One refusal from the per-node ones: never when no node could ever hold it, else busy."""
    if all(o.never for o in outcomes):
        hint = "; a gang (gang=True, any node) may span nodes" if request.count > 1 and several else ""
        where = "no node of the pool can ever hold it: " if several else ""
        return Unplaceable(never=True, message=f"{where}{outcomes[0].message}{hint}")
    busy = next(o for o in outcomes if not o.never)
    prefix = f"no node of {len(outcomes)} has room now; e.g. " if several else ""
    return Unplaceable(never=False, message=f"{prefix}{busy.message}")

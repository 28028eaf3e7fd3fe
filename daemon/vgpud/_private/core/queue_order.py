"""Which waiting requests the leader grants now: state in, decisions out, no I/O.

With fairness (the daemon's leader), requests are served project by project: projects below their deserved
quota first, then the one with the smallest weighted dominant-resource share; within a project by priority,
then age. A request that cannot be placed holds its place; once it has waited longer than the backfill
bound it reserves the nodes it could use (later requests no longer backfill there), so a big request is
never starved by a stream of small ones, yet small ones fill idle holes until then. Without fairness (the
trace simulator's FIFO mode) requests are taken in arrival order and a held request blocks at once. A
fail-fast request never holds a place: it is granted if it fits now and refused otherwise. Limits and
in-quota-only classes are checked against the placement's real use.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from vgpu._private import reasons
from vgpud._private.core.cluster_placement import place_on_nodes
from vgpud._private.core.fair_share import Capacity, project_rank
from vgpud._private.core.model import GpuState, Isolation, ShapeRequest
from vgpud._private.core.placement import GpuView, Placement, Unplaceable, place
from vgpud._private.core.placement_policy import PlacementPolicy
from vgpud._private.core.projects import DEFAULT_PROJECT, Quota, Usage, default_quota


@dataclass(frozen=True, slots=True)
class Waiting:
    """One queued request (or suspended lease waiting to resume) as ordering needs it."""

    lease_id: str
    request: ShapeRequest
    target_node: str
    """Empty: any node."""
    span: bool
    wait: bool
    project: str = DEFAULT_PROJECT
    priority: int = 0
    """The priority class's value: higher goes first within its project."""
    since: float = 0.0
    """Wall time it started waiting (for age order and the backfill bound)."""
    in_quota_only: bool = False
    """Its class is granted only within the project's deserved quota."""
    resume: bool = False
    """A suspended lease: granting it resumes the lease."""
    owner: str = ""
    """Who asked (the verified user): within a project and class, owners take turns, so one user's flood
    of requests does not push everyone else's behind it."""


@dataclass(frozen=True, slots=True)
class Fairness:
    """What fair ordering needs besides the queue: quotas, what each project holds, the pool, the time."""

    quotas: Mapping[str, Quota]
    used: Mapping[str, Usage]
    capacity: Capacity
    now: float
    backfill_bound_s: float = 60.0
    """A request held longer than this reserves its nodes: nothing behind it backfills there."""


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
    quota: bool = False
    """Held by its project's quota, not by capacity (reclaiming from others would not help)."""


Decision = Admit | Reject | Hold


def asked(request: ShapeRequest) -> Usage:
    """What a request would hold at its minimum, as far as can be told before placement."""
    per = 1000 if request.isolation is Isolation.WHOLE else request.compute_milli
    return Usage(per * request.count, request.memory_bytes * request.count)


def placed_use(placement: Placement) -> Usage:
    """What a placement holds."""
    return Usage(
        sum(c.compute_milli for _, c in placement.assignments), sum(c.memory_bytes for _, c in placement.assignments)
    )


def serving_order(queue: Sequence[Waiting], fairness: Fairness | None) -> list[Waiting]:
    """The order the leader considers requests in (static: what each project holds now)."""
    return list(_ordered(queue, fairness, {}))


def _ordered(queue: Sequence[Waiting], fairness: Fairness | None, gained: dict[str, Usage]) -> Iterator[Waiting]:
    """Requests in serving order; `gained` (what admits so far added per project) re-ranks projects as it grows."""
    if fairness is None:
        yield from queue
        return
    lanes: dict[str, list[Waiting]] = {}
    for entry in _taking_turns(queue):
        lanes.setdefault(entry.project, []).append(entry)
    heads = dict.fromkeys(lanes, 0)

    def rank(project: str) -> tuple[int, float, float]:
        head = lanes[project][heads[project]]
        quota = fairness.quotas.get(project) or default_quota(project)
        used = fairness.used.get(project, Usage()) + gained.get(project, Usage())
        return (*project_rank(quota, used, asked(head.request), fairness.capacity), head.since)

    # Only the project that just yielded changes rank (its head moved, and what it gained may have grown).
    ranks = {project: rank(project) for project in heads}
    while heads:
        project = min(heads, key=ranks.__getitem__) if len(heads) > 1 else next(iter(heads))
        yield lanes[project][heads[project]]
        heads[project] += 1
        if heads[project] == len(lanes[project]):
            del heads[project]
            del ranks[project]
        elif len(heads) > 1:
            ranks[project] = rank(project)


_SINCE = operator.attrgetter("since")
_PRIORITY = operator.attrgetter("priority")


def _taking_turns(queue: Sequence[Waiting]) -> list[Waiting]:
    """By class, then each owner's first request before anyone's second (round robin), then age.

    With one owner this is plain (class, age) order.
    """
    ordered = sorted(queue, key=_SINCE)
    ordered.sort(key=_PRIORITY, reverse=True)  # stable: age order within a class
    if len({entry.owner for entry in ordered}) <= 1:
        return ordered
    turns: dict[tuple[str, int, str], int] = {}
    keyed = []
    for index, entry in enumerate(ordered):
        group = (entry.project, entry.priority, entry.owner)
        turn = turns.get(group, 0)
        turns[group] = turn + 1
        keyed.append((-entry.priority, turn, index))
    keyed.sort()
    return [ordered[index] for _, _, index in keyed]


def decide(
    queue: Sequence[Waiting],
    nodes: Mapping[str, Sequence[GpuView]],
    known_nodes: frozenset[str] = frozenset(),
    fairness: Fairness | None = None,
    policy: PlacementPolicy | None = None,
) -> list[Decision]:
    """One decision per queued request, in serving order (placed with `policy`, default best fit).

    `nodes` are the live nodes with their GPUs (draining ones included, their GPUs unschedulable);
    `known_nodes` are nodes with GPUs registered but not up, so a request naming one is told it is down.
    Admitted placements are applied to a working copy, so later decisions see the capacity taken.
    """
    working = {name: list(views) for name, views in nodes.items()}
    blocked: dict[str, str] = {}
    gained: dict[str, Usage] = {}
    out: list[Decision] = []
    unplaceable: dict[tuple[ShapeRequest, tuple[str, ...], bool], Unplaceable] = {}
    """Requests found not to fit since the last admit: an identical one behind them does not fit either
    (a flood of equal requests costs one placement per pass, not one each)."""
    for entry in _ordered(queue, fairness, gained):
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
            _block(blocked, candidates, ahead[0], entry, fairness)
            continue
        shape_key = (entry.request, tuple(candidates), entry.span)
        result = unplaceable.get(shape_key) or place_elastic(entry, {n: working[n] for n in candidates}, policy)
        if isinstance(result, Unplaceable):
            unplaceable[shape_key] = result
            if result.never:
                out.append(Reject(entry.lease_id, reasons.NEVER_FITS, result.message))
            elif not entry.wait:
                out.append(Reject(entry.lease_id, reasons.NO_CAPACITY, result.message))
            else:
                out.append(Hold(entry.lease_id, result.message))
                _block(blocked, candidates, f"request {entry.lease_id}", entry, fairness)
            continue
        quota_problem = _quota_problem(entry, placed_use(result), fairness, gained)
        if quota_problem is not None and entry.request.elastic:  # growth is optional: try the minimum
            where = {n: working[n] for n in candidates}
            minimum = place_on_nodes(entry.request, where, entry.lease_id, span=entry.span, policy=policy)
            if isinstance(minimum, Placement):
                result = minimum
                quota_problem = _quota_problem(entry, placed_use(result), fairness, gained)
        if quota_problem is not None:
            out.append(quota_problem)
            continue
        out.append(Admit(entry.lease_id, result))
        gained[entry.project] = gained.get(entry.project, Usage()) + placed_use(result)
        take(working, result)
        unplaceable.clear()
    return out


def _block(
    blocked: dict[str, str], candidates: Sequence[str], by: str, entry: Waiting, fairness: Fairness | None
) -> None:
    """Reserve `candidates` for a held request, unless it is still young enough to let others backfill."""
    if fairness is not None and fairness.now - entry.since < fairness.backfill_bound_s:
        return
    for name in candidates:
        blocked.setdefault(name, by)


def place_elastic(
    entry: Waiting, nodes: Mapping[str, Sequence[GpuView]], policy: PlacementPolicy | None = None
) -> Placement | Unplaceable:
    """A queued entry placed as place_request places it."""
    return place_request(entry.request, nodes, entry.lease_id, span=entry.span, policy=policy)


def _grown(request: ShapeRequest) -> ShapeRequest | None:
    """The request at its elastic maximum (None when it is not elastic)."""
    if not request.elastic:
        return None
    return replace(
        request,
        compute_milli=max(request.compute_milli, request.compute_milli_max),
        count=max(request.count, request.count_max),
    )


def place_request(
    request: ShapeRequest,
    nodes: Mapping[str, Sequence[GpuView]],
    lease_id: str,
    *,
    span: bool = False,
    policy: PlacementPolicy | None = None,
) -> Placement | Unplaceable:
    """Across nodes: at the elastic maximum when that fits now, else at the minimum (ranked by `policy`)."""
    grown = _grown(request)
    if grown is not None:
        result = place_on_nodes(grown, nodes, lease_id, span=span, policy=policy)
        if isinstance(result, Placement):
            return result
    return place_on_nodes(request, nodes, lease_id, span=span, policy=policy)


def place_local(
    request: ShapeRequest, gpus: Sequence[GpuView], lease_id: str, policy: PlacementPolicy | None = None
) -> Placement | Unplaceable:
    """On one node's GPUs: at the elastic maximum when that fits now, else at the minimum (ranked by `policy`)."""
    grown = _grown(request)
    if grown is not None:
        result = place(grown, gpus, lease_id, policy=policy)
        if isinstance(result, Placement):
            return result
    return place(request, gpus, lease_id, policy=policy)


def _quota_problem(entry: Waiting, use: Usage, fairness: Fairness | None, gained: dict[str, Usage]) -> Decision | None:
    """A Hold (or Reject when it could never pass) if the grant would break its project's quota."""
    if fairness is None:
        return None
    quota = fairness.quotas.get(entry.project) or default_quota(entry.project)
    after = fairness.used.get(entry.project, Usage()) + gained.get(entry.project, Usage()) + use
    over = after.over_limit(quota)
    if over:
        if use.over_limit(quota) or not entry.wait:
            return Reject(entry.lease_id, reasons.OVER_QUOTA, f"project {quota.project} is at its limit: {over}")
        return Hold(entry.lease_id, f"waiting for its project's own leases to end: {over}", quota=True)
    if entry.in_quota_only and not after.within(quota):
        message = (
            f"its priority class runs only within project {quota.project}'s deserved quota "
            f"({quota.deserved_milli} milli-GPU)"
        )
        if not use.within(quota) or not entry.wait:
            return Reject(entry.lease_id, reasons.OVER_QUOTA, f"the request is beyond what {message} allows")
        return Hold(entry.lease_id, f"waiting: {message}", quota=True)
    return None


def take(working: dict[str, list[GpuView]], placement: Placement) -> None:
    """Apply an admitted placement's claims to the working copy."""
    for view, claim in placement.assignments:
        views = working[view.record.node]
        for i, current in enumerate(views):
            if current.record.uuid == view.record.uuid:
                state: GpuState = current.state.with_claim(claim)
                views[i] = replace(current, state=state)
                break

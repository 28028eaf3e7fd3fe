"""Reclaim and elastic shrink: which leases give capacity back so a waiting request can run. Pure.

Only a request whose project stays within its deserved quota reclaims from other projects, and only what
those projects borrowed (a victim's project keeps at least its deserved quota); within a project a higher
priority class may preempt a lower one. Elastic leases are shrunk toward their minimum before anything is
preempted. Victims are chosen to lose the least work: flagged-idle first, then the lowest priority, then
the most recent checkpoint (or grant), then the smallest. Non-preemptible classes and leases younger than
their class's minimum runtime are never victims (DESIGN.md invariant 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from vgpud._private.core.model import GpuState, Isolation
from vgpud._private.core.placement import GpuView, Placement, Unplaceable
from vgpud._private.core.projects import Quota, Usage, default_quota
from vgpud._private.core.queue_order import Waiting, asked, place_elastic, placed_use, take

MAX_PLANS_PER_PASS = 8
"""Held requests considered for reclaim per leader pass (the rest wait for the next pass)."""


@dataclass(frozen=True, slots=True)
class Running:
    """A granted lease as reclaim sees it."""

    lease_id: str
    project: str
    priority: int
    preemptible: bool
    use: Usage
    progress_at: float
    """Wall time of its last checkpoint, grant or resume: the work since then is what preempting loses."""
    runnable_for: float
    """Seconds it has run since its last grant or resume."""
    min_runtime_s: float
    idle: bool = False
    preempting: bool = False
    """Already asked to yield: its capacity is as good as free."""
    min_compute: int = 0
    """Elastic shared slices: the compute each slice may shrink to (0: not shrinkable)."""
    min_count: int = 0
    """Elastic count: how many slices it may shrink to (0: not shrinkable by count)."""
    droppable: frozenset[str] = frozenset()
    """GPUs of the slices a count shrink would give back (those beyond min_count)."""


@dataclass(frozen=True, slots=True)
class Resize:
    """Resize an elastic lease: its shared slices to `compute_milli` each, or to `count` slices.

    Reclaim shrinks toward the minimum with it; growth uses it toward the maximum.
    """

    lease_id: str
    compute_milli: int
    count: int = 0
    """Non-zero: a count shrink to this many slices (compute_milli is then 0)."""


@dataclass(frozen=True, slots=True)
class Preempt:
    """Ask a lease to checkpoint and yield, so that `for_lease` can run."""

    lease_id: str
    for_lease: str
    message: str


Action = Resize | Preempt


def plan(
    held: Sequence[Waiting],
    nodes: Mapping[str, Sequence[GpuView]],
    running: Sequence[Running],
    quotas: Mapping[str, Quota],
    used: Mapping[str, Usage],
) -> list[Action]:
    """Shrinks and preemptions that let the first held requests run (at most MAX_PLANS_PER_PASS of them)."""
    working = {name: list(views) for name, views in nodes.items()}
    for lease in running:
        if lease.preempting:
            _drop(working, lease.lease_id)
    held_use = dict(used)
    for lease in running:
        if lease.preempting:
            held_use[lease.project] = held_use.get(lease.project, Usage()) - lease.use
    taken: set[str] = {r.lease_id for r in running if r.preempting}
    planned: dict[str, Usage] = {}  # what requests placed so far will hold, per project (counts toward its quota)
    actions: list[Action] = []
    for entry in list(held)[:MAX_PLANS_PER_PASS]:
        if not entry.wait:
            continue
        candidates = {n: working[n] for n in ([entry.target_node] if entry.target_node else sorted(working))}
        if any(n not in working for n in candidates):
            continue
        fits = place_elastic(entry, candidates)
        if isinstance(fits, Placement):
            take(working, fits)  # freed by earlier preemptions: reserve it, nothing more to do
            planned[entry.project] = planned.get(entry.project, Usage()) + placed_use(fits)
            continue
        if fits.never:
            continue
        own_use = dict(held_use)
        own_use[entry.project] = held_use.get(entry.project, Usage()) + planned.get(entry.project, Usage())
        found = _plan_one(entry, working, candidates, running=running, quotas=quotas, used=own_use, taken=taken)
        if found is None:
            continue
        new_actions, placement = found
        actions += new_actions
        for action in new_actions:
            if isinstance(action, Preempt):
                taken.add(action.lease_id)
                victim = next(r for r in running if r.lease_id == action.lease_id)
                held_use[victim.project] = held_use.get(victim.project, Usage()) - victim.use
        take(working, placement)
        planned[entry.project] = planned.get(entry.project, Usage()) + placed_use(placement)
    return actions


def _plan_one(
    entry: Waiting,
    working: dict[str, list[GpuView]],
    candidates: Mapping[str, Sequence[GpuView]],
    *,
    running: Sequence[Running],
    quotas: Mapping[str, Quota],
    used: Mapping[str, Usage],
    taken: set[str],
) -> tuple[list[Action], Placement] | None:
    shrinkable = [
        r
        for r in running
        if (r.min_compute or r.droppable) and r.lease_id not in taken and r.lease_id != entry.lease_id
    ]
    trial = {n: [_shrunk(v, shrinkable) for v in views] for n, views in candidates.items()}
    placement = place_elastic(entry, trial)
    if isinstance(placement, Placement):
        return _shrinks_for(placement, shrinkable), placement
    best: list[Running] | None = None
    for scope in _scopes(entry, trial):
        holders = {c.lease_id for views in scope.values() for v in views for c in v.state.claims}
        found = _greedy(entry, scope, _victims(entry, running, quotas, used, taken, holders=holders))
        if found is not None:
            found = _minimal(entry, candidates, shrinkable, found)
            if best is None or _cost(found) < _cost(best):
                best = found
    if best is None:
        return None
    victims = best
    trial = {n: [_shrunk(v, shrinkable) for v in views] for n, views in candidates.items()}
    for victim in victims:
        for views in trial.values():
            views[:] = [_without(v, victim.lease_id) for v in views]
    final = place_elastic(entry, trial)
    if isinstance(final, Unplaceable):  # cannot happen: _minimal keeps a fitting set
        return None
    for victim in victims:
        _drop(working, victim.lease_id)
    why = f"reclaimed for request {entry.lease_id} of project {entry.project}"
    preempts: list[Action] = [Preempt(v.lease_id, entry.lease_id, why) for v in victims]
    return [*_shrinks_for(final, shrinkable), *preempts], final


def _scopes(entry: Waiting, trial: Mapping[str, Sequence[GpuView]]) -> list[dict[str, list[GpuView]]]:
    """Where to look for victims: each node alone (a request lands on one node), all together for a spanning gang.

    Looking per node keeps a victim elsewhere from using up what its project may lose (and being preempted for
    nothing), so a request is not refused a reclaim that one node could give it.
    """
    scopes = [{name: list(trial[name])} for name in sorted(trial)]
    if entry.span and len(trial) > 1:
        scopes.append({name: list(views) for name, views in trial.items()})
    return scopes


def _greedy(entry: Waiting, scope: dict[str, list[GpuView]], victims: Sequence[Running]) -> list[Running] | None:
    """Victims in order until the request fits in `scope`, or None when all of them are not enough."""
    chosen: list[Running] = []
    for victim in victims:
        chosen.append(victim)
        for views in scope.values():
            views[:] = [_without(v, victim.lease_id) for v in views]
        if isinstance(place_elastic(entry, scope), Placement):
            return chosen
    return None


def _cost(victims: Sequence[Running]) -> tuple[int, int, int, int]:
    """How much work a set of victims loses (smaller is better): busy ones, top priority, capacity, count."""
    top = max((v.priority for v in victims), default=-1)
    return sum(not v.idle for v in victims), top, sum(v.use.milli for v in victims), len(victims)


def _victims(
    entry: Waiting,
    running: Sequence[Running],
    quotas: Mapping[str, Quota],
    used: Mapping[str, Usage],
    taken: set[str],
    *,
    holders: set[str],
) -> list[Running]:
    """Leases among `holders` (with claims where it may land) that may yield for `entry`, least work lost first."""
    own = quotas.get(entry.project) or default_quota(entry.project)
    reclaiming = (used.get(entry.project, Usage()) + asked(entry.request)).within(own) and own.deserved_milli > 0
    left = dict(used)
    out: list[Running] = []
    order = sorted(running, key=lambda r: (not r.idle, r.priority, -r.progress_at, r.use.milli, r.lease_id))
    for lease in order:
        if lease.lease_id in taken or lease.preempting or not lease.preemptible or lease.lease_id not in holders:
            continue
        if lease.runnable_for < lease.min_runtime_s:
            continue
        if lease.project == entry.project:
            if lease.priority >= entry.priority:
                continue
        else:
            if not reclaiming:
                continue
            quota = quotas.get(lease.project) or default_quota(lease.project)
            remaining = left.get(lease.project, Usage()) - lease.use
            if remaining.milli < quota.deserved_milli:
                continue  # only borrowed capacity is reclaimed
            left[lease.project] = remaining
        out.append(lease)
    return out


def _minimal(
    entry: Waiting, candidates: Mapping[str, Sequence[GpuView]], shrinkable: Sequence[Running], victims: list[Running]
) -> list[Running]:
    """Drop victims (most work lost first) whose preemption turns out not to be needed."""
    kept = list(victims)
    for victim in reversed(victims):
        trial_set = [v for v in kept if v is not victim]
        trial = {n: [_shrunk(v, shrinkable) for v in views] for n, views in candidates.items()}
        for other in trial_set:
            for views in trial.values():
                views[:] = [_without(v, other.lease_id) for v in views]
        if isinstance(place_elastic(entry, trial), Placement):
            kept = trial_set
    return kept


def _shrunk(view: GpuView, shrinkable: Sequence[Running]) -> GpuView:
    """The view with every shrinkable elastic claim at its minimum compute, and count-shrunk slices gone."""
    minimum = {r.lease_id: r.min_compute for r in shrinkable if r.min_compute}
    dropped = {r.lease_id for r in shrinkable if view.record.uuid in r.droppable}
    if not any(c.lease_id in minimum or c.lease_id in dropped for c in view.state.claims):
        return view
    for lease_id in dropped:
        view = _without(view, lease_id)
    claims = tuple(
        replace(c, compute_milli=min(c.compute_milli, minimum[c.lease_id]))
        if c.lease_id in minimum and c.isolation is Isolation.SHARED
        else c
        for c in view.state.claims
    )
    return replace(view, state=replace(view.state, claims=claims))


def _shrinks_for(placement: Placement, shrinkable: Sequence[Running]) -> list[Action]:
    """Resize only the elastic leases on the GPUs the placement uses, and only those above their minimum."""
    minimum = {r.lease_id: r.min_compute for r in shrinkable if r.min_compute}
    by_count = {r.lease_id: r for r in shrinkable if r.droppable}
    out: dict[str, Resize] = {}
    for view, _claim in placement.assignments:
        for claim in view.state.claims:
            if claim.lease_id in minimum and claim.isolation is Isolation.SHARED:
                out[claim.lease_id] = Resize(claim.lease_id, minimum[claim.lease_id])
        for lease in by_count.values():
            if view.record.uuid in lease.droppable:
                out[lease.lease_id] = Resize(lease.lease_id, 0, lease.min_count)
    return [out[lease_id] for lease_id in sorted(out)]


def _without(view: GpuView, lease_id: str) -> GpuView:
    """The view as if `lease_id` had given everything back (its MIG slots included)."""
    state = view.state
    if not any(c.lease_id == lease_id for c in state.claims):
        return view
    freed = GpuState(
        mode=state.mode,
        claims=tuple(c for c in state.claims if c.lease_id != lease_id),
        mig=tuple(m for m in state.mig if m.lease_id != lease_id),
    )
    return replace(view, state=freed)


def _drop(working: dict[str, list[GpuView]], lease_id: str) -> None:
    for views in working.values():
        views[:] = [_without(v, lease_id) for v in views]

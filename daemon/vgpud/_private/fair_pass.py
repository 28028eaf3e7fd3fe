"""One leader pass of fair sharing: the queue and the running leases read from the view, fed to the core.

The pure core (queue_order.decide, reclaim.plan) decides; the leader writes what it decided.

Suspended leases wait in the queue next to queued requests (they are the lease records themselves, so a
suspended lease survives the death of any daemon). Requests are tied to projects and priority classes here,
and the grant rate (for estimated waits) is read off the leases' grant and resume steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from vgpud._private.core.fair_share import Capacity
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import GpuRecord, Isolation, LeaseState
from vgpud._private.core.placement import GpuView
from vgpud._private.core.placement_policy import PlacementPolicy
from vgpud._private.core.priorities import PriorityClass, PriorityClasses
from vgpud._private.core.projects import lease_usage, project_of, usage_by_project
from vgpud._private.core.queue_order import Admit, Decision, Fairness, Hold, Waiting, decide, serving_order, take
from vgpud._private.core.reclaim import Action, Running, plan
from vgpud._private.pool_view import PoolView, Queued, waiter_of

GRANT_WINDOW_S = 300.0
"""Grant throughput is measured over this window (Little's law: wait = position / rate)."""


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass decided."""

    decisions: list[Decision]
    actions: list[Action]
    """Shrinks and preemptions for held requests (empty unless reclaim is on)."""


def priority_of(classes: PriorityClasses, name: str) -> PriorityClass:
    """The class of a lease or request; the default class for one whose class left the config."""
    return classes.by_name.get(name or classes.default) or classes.get("")


class WaitingCache:
    """Waiting entries kept between passes: a queue of thousands is re-read each pass, but few of them change."""

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[Queued, Waiting]] = {}

    def entry(self, queued: Queued, classes: PriorityClasses, fresh: dict[str, tuple[Queued, Waiting]]) -> Waiting:
        """The entry of `queued`, rebuilt only when its record changed (kept in `fresh` for the next pass)."""
        lease_id = queued.request.lease_id
        known = self._by_id.get(lease_id)
        waiting = known[1] if known is not None and known[0] is queued else _from_queue(queued, classes)
        fresh[lease_id] = (queued, waiting)
        return waiting

    def replace(self, fresh: dict[str, tuple[Queued, Waiting]]) -> None:
        """Keep only what this pass saw."""
        self._by_id = fresh


def waiting_entries(view: PoolView, classes: PriorityClasses, cache: WaitingCache | None = None) -> list[Waiting]:
    """Queued requests (not yet refused) and suspended leases, as the core orders them."""
    memo = cache or WaitingCache()
    fresh: dict[str, tuple[Queued, Waiting]] = {}
    out = [memo.entry(q, classes, fresh) for q in view.queue() if not q.request.refused]
    memo.replace(fresh)
    for versioned in view.live_leases():
        lease = versioned.value
        if lease.state is LeaseState.SUSPENDED:
            out.append(_from_suspended(lease, classes))
    return out


def _from_queue(entry: Queued, classes: PriorityClasses) -> Waiting:
    waiting = entry.request
    lease = waiting.lease
    cls = priority_of(classes, lease.priority)
    return Waiting(
        lease.id,
        lease.request,
        waiting.target_node,
        waiting.span,
        waiting.wait,
        project=project_of(lease),
        priority=cls.value,
        since=lease.created_at,
        in_quota_only=cls.in_quota_only,
        owner=waiter_of(entry.request),
    )


def _from_suspended(lease: LeaseRecord, classes: PriorityClasses) -> Waiting:
    cls = priority_of(classes, lease.priority)
    since = lease.last_step("suspended", default=lease.created_at)
    return Waiting(
        lease.id,
        lease.request,
        lease.target_node,
        lease.gang and lease.any_node,
        wait=True,
        project=project_of(lease),
        priority=cls.value,
        since=since,
        in_quota_only=cls.in_quota_only,
        resume=True,
        owner=lease.owner.user or lease.owner.identity,
    )


def capacity_of(gpus: Iterable[GpuRecord]) -> Capacity:
    """The pool's capacity: every registered GPU."""
    records = list(gpus)
    return Capacity(1000 * len(records), sum(g.memory_bytes for g in records))


def fairness(view: PoolView, *, now: float, backfill_bound_s: float) -> Fairness:
    """Quotas, what each project holds, and the pool's size, from the view."""
    leases = [v.value for v in view.live_leases()]
    return Fairness(
        quotas=view.quotas(),
        used=usage_by_project(leases),
        capacity=capacity_of(view.gpus().values()),
        now=now,
        backfill_bound_s=backfill_bound_s,
    )


def running(view: PoolView, classes: PriorityClasses, now: float) -> list[Running]:
    """Granted and preempting leases as reclaim weighs them."""
    out = []
    for versioned in view.live_leases():
        lease = versioned.value
        if lease.state not in (LeaseState.GRANTED, LeaseState.RESIZING, LeaseState.PREEMPTING):
            continue
        cls = priority_of(classes, lease.priority)
        started = lease.last_step("granted", "resumed", default=lease.created_at)
        progress = max(started, lease.last_step("checkpointed"))
        shrinkable = lease.request.compute_milli_max > lease.request.compute_milli and any(
            s.isolation is Isolation.SHARED and s.compute_milli > lease.request.compute_milli for s in lease.slices
        )
        droppable = _droppable(lease)
        out.append(
            Running(
                lease.id,
                project_of(lease),
                cls.value,
                cls.preemptible,
                lease_usage(lease),
                progress_at=progress,
                runnable_for=now - started,
                min_runtime_s=cls.min_runtime_s,
                idle=lease.idle_since > 0,
                preempting=lease.state is LeaseState.PREEMPTING,
                min_compute=lease.request.compute_milli if shrinkable else 0,
                min_count=lease.request.count if droppable else 0,
                droppable=droppable,
            )
        )
    return out


def _droppable(lease: LeaseRecord) -> frozenset[str]:
    """GPUs of a count-elastic lease's slices beyond its minimum (what a count shrink gives back)."""
    low = lease.request.count
    if lease.request.count_max <= low or len(lease.slices) <= low or lease.state is not LeaseState.GRANTED:
        return frozenset()
    return frozenset(s.gpu_uuid for s in lease.slices[low:])


def decide_pass(
    view: PoolView,
    nodes: Mapping[str, Sequence[GpuView]],
    down: frozenset[str],
    *,
    classes: PriorityClasses,
    now: float,
    backfill_bound_s: float,
    reclaim: bool,
    policy: PlacementPolicy | None = None,
    cache: WaitingCache | None = None,
) -> PassResult:
    """Decide the queue (placing with `policy`, default best fit), then plan reclaim for what capacity holds back."""
    entries = waiting_entries(view, classes, cache)
    fair = fairness(view, now=now, backfill_bound_s=backfill_bound_s)
    decisions = decide(entries, nodes, down, fair, policy)
    actions: list[Action] = []
    if reclaim:
        by_id = {e.lease_id: e for e in entries}
        held = [by_id[d.lease_id] for d in decisions if isinstance(d, Hold) and not d.quota]
        if held:
            after = {name: list(views) for name, views in nodes.items()}
            for decision in decisions:
                if isinstance(decision, Admit):
                    take(after, decision.placement)  # what this pass grants is not there to reclaim
            actions = plan(held, after, running(view, classes, now), fair.quotas, fair.used)
    return PassResult(decisions, actions)


def queue_positions(
    view: PoolView, classes: PriorityClasses, *, now: float, cache: WaitingCache | None = None
) -> list[Waiting]:
    """The queue in the order the leader serves it (every daemon can compute this from its view)."""
    return serving_order(waiting_entries(view, classes, cache), fairness(view, now=now, backfill_bound_s=0.0))


def grant_rate(leases: Iterable[LeaseRecord], now: float) -> float:
    """Grants (and resumes) per second over the last GRANT_WINDOW_S."""
    since = now - GRANT_WINDOW_S
    count = 0
    for lease in leases:
        if lease.steps:
            count += sum(1 for name, t in lease.steps if name in ("granted", "resumed") and t >= since)
        elif lease.created_at >= since and lease.state is not LeaseState.PENDING:
            count += 1
    return count / GRANT_WINDOW_S


class QueueRanking:
    """The serving order and grant rate for queue positions, recomputed only when the view changed.

    Where this daemon leads, the order is the one its last decision pass held requests in (`held_order`):
    ranking a long queue a second time would cost as much as the pass itself.
    """

    def __init__(
        self,
        view: PoolView,
        classes: PriorityClasses,
        clock: Callable[[], float],
        held_order: Callable[[], list[str] | None] = lambda: None,
    ) -> None:
        self._view = view
        self._classes = classes
        self._clock = clock
        self._held_order = held_order
        self._cached: tuple[tuple[int, int], list[str], float] | None = None
        self._entries = WaitingCache()

    def __call__(self) -> tuple[list[str], float]:
        """(lease ids in serving order, grants per second lately)."""
        held = self._held_order()
        generation = (self._view.generation, id(held))
        if self._cached is None or self._cached[0] != generation:
            now = self._clock()
            if held is not None:
                order = held
            else:
                order = [w.lease_id for w in queue_positions(self._view, self._classes, now=now, cache=self._entries)]
            leases = [v.value for v in self._view.live_leases()] + [v.value for v in self._view.ended_leases()]
            self._cached = (generation, order, grant_rate(leases, now))
        return self._cached[1], self._cached[2]

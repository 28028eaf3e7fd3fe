"""One decider for the pool: an etcd election, and the leader's work while it holds it.

The leader orders the pool-wide queue and places requests across nodes (core/queue_order.py), and
revokes the leases of nodes whose etcd lease expired (NODE_LOST). Every write it makes carries a
compare on the election key's revision (the fence), so a deposed leader that has not noticed yet
cannot write anything. Leadership is held by an etcd lease refreshed every third of its TTL; a leader
that cannot refresh stops deciding before etcd would hand the key to another daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from vgpu._private import reasons
from vgpud._private.config_scheduling import SchedulingConfig
from vgpud._private.core.model import LeaseState
from vgpud._private.core.priorities import STANDARD, PriorityClasses
from vgpud._private.core.queue_order import Admit, Hold, Reject
from vgpud._private.core.reclaim import Action, Resize
from vgpud._private.fair_pass import WaitingCache, decide_pass, priority_of
from vgpud._private.grants.allocator import Allocator
from vgpud._private.grants.elastic_growth import growable
from vgpud._private.grants.lease_transitions import LeaseTransitions
from vgpud._private.pool_view import PoolView, Queued
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys
from vgpud._private.store.base import Compare, ModRevisionIs, Put, Store, StoreError

log = structlog.get_logger("vgpud.leader")

_MARGIN_S = 1.0
"""Stop deciding this long before etcd could expire the election lease."""
_IDLE_PASS_S = 2.0
_PASS_GAP_S = 0.01
"""Least time between two passes: under churn the changes of several grants and releases share one pass."""
"""Decide again at least this often even when the view is quiet (e.g. after a refused write)."""


class Leadership:
    """Campaigns for the election key, and while elected runs the leader's decisions."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        view: PoolView,
        node: str,
        *,
        ttl: int,
        timeout: float,
        make_allocator: Callable[[Leadership], Allocator],
        classes: PriorityClasses = STANDARD,
        scheduling: SchedulingConfig | None = None,
        on_preempted: Callable[[float, str], None] = lambda _seconds, _outcome: None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._view = view
        self._node = node
        self._ttl = ttl
        self._timeout = timeout
        self._make_allocator = make_allocator
        self._lease = 0
        self._revision = 0
        self._valid_until = 0.0
        self.holds: dict[str, str] = {}
        """Why each held request waits, from the last decision pass (for queue positions)."""
        self._entries = WaitingCache()
        """The queue as the core sees it, kept between passes."""
        self.held_order: list[str] = []
        """The held requests in the order the last pass considered them (queue positions where this node leads)."""
        self._classes = classes
        self._scheduling = scheduling or SchedulingConfig()
        self._last_grow = 0.0
        self._on_preempted = on_preempted

    # -- the fence -----------------------------------------------------------------------------------
    @property
    def leading(self) -> bool:
        """Whether this daemon may decide now."""
        return self.compare() is not None

    def compare(self) -> Compare | None:
        """The election-key guard for leader writes; None when not (or no longer surely) the leader."""
        if not self._revision or time.monotonic() >= self._valid_until:
            return None
        seen = self._view.leader()
        if seen is not None and seen.revision != self._revision:
            return None
        return ModRevisionIs(self._keys.leader, self._revision)

    # -- election ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Campaign, lead until deposed, campaign again. Runs until cancelled."""
        backoff = 0.2
        while True:
            try:
                await self._campaign()
                backoff = 0.2
                await self._lead()
            except StoreError as exc:
                log.warning("leader election: etcd unreachable", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if self._revision:
                    log.info("stepped down as pool leader", node=self._node)
                self._revision = 0

    async def resign(self) -> None:
        """Hand leadership over now (clean shutdown) instead of letting it lapse."""
        lease, self._lease, self._revision = self._lease, 0, 0
        if lease:
            with contextlib.suppress(StoreError):
                await self._store.revoke(lease, timeout=self._timeout)

    async def _campaign(self) -> None:
        while True:
            if self._view.leader() is None:
                lease = await self._store.grant(self._ttl, timeout=self._timeout)
                asked = time.monotonic()
                claim = Put(self._keys.leader, self._node.encode(), lease=lease)
                txn = await self._store.txn([ModRevisionIs(self._keys.leader, 0)], [claim], timeout=self._timeout)
                if txn.succeeded:
                    self._lease, self._revision = lease, txn.revision
                    self._valid_until = asked + self._ttl - _MARGIN_S
                    self._view.apply_committed([claim], txn.revision)
                    log.info("elected pool leader", node=self._node, revision=txn.revision)
                    return
                with contextlib.suppress(StoreError):
                    await self._store.revoke(lease, timeout=self._timeout)
            await self._view.wait_changed(self._view.generation, timeout=self._ttl / 2)

    async def _lead(self) -> None:
        allocator = self._make_allocator(self)
        tasks = [
            asyncio.create_task(self._decide_loop(allocator), name="leader-decide"),
            asyncio.create_task(allocator.liveness.run(), name="leader-liveness"),
        ]
        try:
            while self.leading:
                await asyncio.sleep(self._ttl / 3)
                asked = time.monotonic()
                try:
                    left = await self._store.refresh(self._lease, timeout=min(self._timeout, self._ttl / 3))
                except StoreError as exc:
                    log.warning("cannot refresh leadership", error=str(exc))
                    continue
                if left <= 0:
                    return
                self._valid_until = asked + left - _MARGIN_S
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- decisions -----------------------------------------------------------------------------------
    async def _decide_loop(self, allocator: Allocator) -> None:
        while True:
            generation = self._view.generation
            started = time.perf_counter()
            try:
                await self.decide_once(allocator)
            except (StoreError, Refusal) as exc:
                log.warning("leader pass failed; retrying", error=str(exc))
            # Three times as long as the pass took: under a flood of queue changes passes take at most a quarter of
            # the loop, and what changes meanwhile is seen by the wait below.
            await asyncio.sleep(max(_PASS_GAP_S, 3 * (time.perf_counter() - started)))
            await self._view.wait_changed(generation, timeout=_IDLE_PASS_S)

    async def decide_once(self, allocator: Allocator) -> None:
        """One pass: revoke leases of lost nodes, then grant or refuse what the queue order says."""
        if not self.leading:
            return
        down = self._view.nodes_with_gpus() - set(self._view.nodes())
        for outcome in await asyncio.gather(*self._revoke_lost(allocator, down), return_exceptions=True):
            if isinstance(outcome, StoreError | Refusal):
                log.warning("cannot revoke a lost node's lease yet", error=str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
        transitions = LeaseTransitions(allocator)
        now = allocator.clock()
        writes: list[Awaitable[object]] = [
            self._revoke_missed(allocator, lease.id)
            for lease in (v.value for v in self._view.live_leases())
            if lease.state is LeaseState.PREEMPTING and 0 < lease.preempt_deadline <= now
        ]
        sched = self._scheduling
        result = decide_pass(
            self._view,
            allocator.candidates_by_node(""),
            frozenset(down),
            classes=self._classes,
            now=now,
            backfill_bound_s=sched.backfill_bound_s,
            reclaim=sched.reclaim,
            policy=allocator.placement_policy(),
            cache=self._entries,
        )
        self.holds = {d.lease_id: d.message for d in result.decisions if isinstance(d, Hold)}
        self.held_order = list(self.holds)
        writes += [self._apply(allocator, transitions, d) for d in result.decisions if not isinstance(d, Hold)]
        writes += [self._act(transitions, action) for action in result.actions]
        if not result.decisions and now - self._last_grow >= sched.grow_interval_s:
            self._last_grow = now
            writes += [self._grow(transitions, lease) for lease in growable(self._view)]
        for outcome in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(outcome, StoreError):
                raise outcome
            if isinstance(outcome, BaseException) and not isinstance(outcome, Refusal):
                raise outcome

    async def _apply(self, allocator: Allocator, transitions: LeaseTransitions, decision: Admit | Reject) -> None:
        """Grant or refuse a queued request; resume or revoke a suspended lease."""
        queued = self._view.queued(decision.lease_id)
        if isinstance(decision, Admit):
            if queued is not None:
                await self._grant(allocator, queued)
            else:
                with contextlib.suppress(Refusal):
                    await transitions.resume(decision.lease_id)
        elif queued is not None:
            await allocator.refuse_queued(queued, decision.reason, decision.message)
        else:
            await allocator.end(decision.lease_id, LeaseState.REVOKED, decision.reason, decision.message)

    async def _revoke_missed(self, allocator: Allocator, lease_id: str) -> None:
        log.warning("lease missed its preemption deadline; revoking", lease=lease_id)
        current = self._view.lease(lease_id)
        asked = current.value.last_step("preempt") if current else 0.0
        if asked:
            self._on_preempted(allocator.clock() - asked, "missed")
        await allocator.end(
            lease_id,
            LeaseState.REVOKED,
            reasons.END_PREEMPT_MISSED,
            "did not checkpoint and acknowledge the preemption before its deadline",
        )

    async def _act(self, transitions: LeaseTransitions, action: Action) -> None:
        if isinstance(action, Resize):
            with contextlib.suppress(Refusal):
                if action.count:
                    await transitions.resize_count(action.lease_id, action.count)
                else:
                    await transitions.resize(action.lease_id, action.compute_milli)
            return
        lease = self._view.lease(action.lease_id)
        if lease is None:
            return
        grace = priority_of(self._classes, lease.value.priority).preempt_grace_s
        with contextlib.suppress(Refusal):
            await transitions.preempt(action.lease_id, reason=action.message, grace_s=grace)

    async def _grow(self, transitions: LeaseTransitions, grow: Resize) -> None:
        with contextlib.suppress(Refusal):
            if grow.count:
                await transitions.resize_count(grow.lease_id, grow.count)
            else:
                await transitions.resize(grow.lease_id, grow.compute_milli)

    async def _grant(self, allocator: Allocator, entry: Queued) -> None:
        try:
            lease = await allocator.grant_queued(entry)
        except Refusal as refusal:
            # OVER_QUOTA here: another grant for its project committed since this pass decided (it stays
            # queued; the next pass decides with that grant counted, holding or refusing it for its project).
            if refusal.reason not in (reasons.NO_CAPACITY, reasons.CONFLICT, reasons.NO_LEADER, reasons.OVER_QUOTA):
                await allocator.refuse_queued(entry, refusal.reason, refusal.message)
            return
        log.info("queued request granted", lease=lease.id, nodes=sorted({s.node for s in lease.slices}))

    def _revoke_lost(self, allocator: Allocator, down: set[str]) -> list[asyncio.Future[object]]:
        """Revocations for live leases with a slice on a `down` node; no lease scan while every node is up."""
        out: list[asyncio.Future[object]] = []
        if not down:
            return out
        for versioned in self._view.live_leases():
            lease = versioned.value
            lost = sorted({s.node for s in lease.slices} & down)
            if lost:
                message = f"node {', '.join(lost)} stopped answering (its etcd lease expired)"
                log.warning("revoking lease of a lost node", lease=lease.id, nodes=lost)
                out.append(
                    asyncio.ensure_future(allocator.end(lease.id, LeaseState.REVOKED, reasons.END_NODE_LOST, message))
                )
        return out

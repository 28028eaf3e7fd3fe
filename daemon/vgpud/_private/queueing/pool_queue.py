"""The asking daemon's side of the pool-wide queue: put a request in etcd, follow it, withdraw it.

A request that must wait, or that asks for another node or any node, is written to queue/<lease_id>,
bound to this node's etcd lease (a dead daemon's waiters vanish with it). The leader grants it by
writing the lease and deleting the key in one fenced transaction, or writes a refusal into it. This
daemon holds the client's stream meanwhile and hands over the lease (with the token only it knows).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import structlog

from vgpu._private import reasons
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import LeaseState
from vgpud._private.core.queued import QueuedRequest
from vgpud._private.grants.allocator import AcquireSpec, Allocator
from vgpud._private.pool_view import PoolView, waiter_of
from vgpud._private.queueing.positions import Position, PositionBoard
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys
from vgpud._private.store.base import Delete, ModRevisionIs, Put, Store, StoreError

log = structlog.get_logger("vgpud.pool_queue")

_RECHECK_S = 60.0
"""A waiting stream looks at its request this often even without a change (a safety net, not the signal)."""
_WITHDRAW_RETRY_S = 0.5
_WITHDRAW_RETRY_MAX_S = 5.0


class PoolQueue:
    """Submit, follow and withdraw requests in the pool-wide queue."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        view: PoolView,
        allocator: Allocator,
        *,
        node: str,
        node_lease: Callable[[], int],
        holds: Callable[[], dict[str, str]],
        timeout: float,
        ranking: Callable[[], tuple[list[str], float]] | None = None,
        stopping: asyncio.Event,
        max_length: int = 10_000,
        max_per_user: int = 100,
        update_interval: float = 1.0,
        on_position_message: Callable[[], object] = lambda: None,
        on_cap_refusal: Callable[[str], object] = lambda _cap: None,
    ) -> None:
        self._store = store
        self._stopping = stopping
        self._keys = keys
        self._view = view
        self._allocator = allocator
        self._node = node
        self._node_lease = node_lease
        self._holds = holds
        """The leader's reasons for held requests when this daemon leads (empty otherwise)."""
        self._timeout = timeout
        self._ranking = ranking
        """The leader's serving order (queued and suspended ids) and the grant rate, when fair sharing is on."""
        self._withdrawing: set[asyncio.Future[None]] = set()
        self._max_length = max_length
        self._max_per_user = max_per_user
        self._on_cap_refusal = on_cap_refusal
        self._submitting: Counter[str] = Counter()
        self._submitting_total = 0
        self.board = PositionBoard(
            view, ranking or self._arrival_order, holds, interval=update_interval, on_message=on_position_message
        )
        """Who of this daemon's waiting clients hears a new position, and when."""

    def _arrival_order(self) -> tuple[list[str], float]:
        return [q.request.lease_id for q in self._view.queue() if not q.request.refused], 0.0

    def waiting_for(self, node: str) -> bool:
        """Whether any live request in the queue could take capacity on `node` (so a newcomer must queue)."""
        if any(target in ("", node) for target in self._view.suspended().values()):
            return True
        return self._view.waiting_for_capacity(node)

    async def submit(self, spec: AcquireSpec, lease_id: str, token: str, *, wait: bool) -> QueuedRequest:
        """Put the request in the queue (or find it there from an earlier attempt of the same request id)."""
        pending = self._allocator.pending_record(spec, lease_id, token, self._node)
        request = QueuedRequest(pending, target_node="" if spec.any_node else spec.node, span=spec.span, wait=wait)
        if self._view.queued(lease_id) is not None:
            return request  # an earlier attempt of this request id still waits: keep its place
        owner = waiter_of(request)
        self._check_caps(owner)
        self._submitting[owner] += 1  # counted until the view has it, so concurrent submissions cannot pass a cap
        self._submitting_total += 1
        try:
            await self._put(request)
        finally:
            self._submitting_total -= 1
            self._submitting[owner] -= 1
            if not self._submitting[owner]:
                del self._submitting[owner]
        return request

    def _check_caps(self, owner: str) -> None:
        """Refuse a newcomer past the pool's queue length or its owner's share of it (RESOURCE_EXHAUSTED).

        Counted in this daemon's view: requests submitted at the same moment on other nodes may pass a cap
        by the few that raced; none is ever lost or double-granted by that.
        """
        waiting = self._view.waiting_count() + self._submitting_total
        if waiting >= self._max_length:
            self._on_cap_refusal("max_queue_length")
            raise Refusal(
                reasons.QUEUE_FULL,
                f"the pool's queue is full: {waiting} requests wait (max_queue_length = {self._max_length}); "
                "retry later, or ask an admin to raise max_queue_length",
            )
        mine = self._view.waiting_count(owner) + self._submitting[owner]
        if mine >= self._max_per_user:
            self._on_cap_refusal("max_waiting_per_user")
            raise Refusal(
                reasons.TOO_MANY_WAITING,
                f"{owner} already has {mine} requests waiting (max_waiting_per_user = {self._max_per_user}); "
                "wait for some to be granted or cancel them first",
            )

    async def _put(self, request: QueuedRequest) -> None:
        key = self._keys.queue(request.lease_id)
        if self._view.queued(request.lease_id) is not None:
            return  # an earlier attempt of this request id still waits: keep its place
        put = Put(key, request.to_json(), lease=self._node_lease())
        guards = [ModRevisionIs(key, 0), ModRevisionIs(self._keys.lease(request.lease_id), 0)]
        txn = await self._store.txn(guards, [put], timeout=self._timeout)
        if txn.succeeded:
            self._view.apply_committed([put], txn.revision)
            return
        for guarded in (key, self._keys.lease(request.lease_id)):
            self._view.refresh_key(await self._store.get(guarded, timeout=self._timeout), guarded)

    def position(self, lease_id: str) -> Position:
        """1-based place among live waiting requests, and why it waits (ranked now: for the admin listing)."""
        return self.board.rank().get(lease_id) or Position(0, self._view.waiting_count(), "")

    async def follow(self, request: QueuedRequest, deadline: float) -> AsyncIterator[Position | LeaseRecord]:
        """Positions while it waits (only when its own place changed), then the granted lease.

        Refusal when refused or past `deadline`. Wakes on changes of its own queue and lease keys (grants
        and refusals at once) and on the board's say (positions); it never ranks the queue itself.
        """
        lease_id = request.lease_id
        watch = self.board.watch(lease_id)
        changed = self._view.listen_request(lease_id)
        try:
            while True:
                granted = self._view.lease(lease_id)
                if granted is not None:
                    if granted.value.state.ended:
                        raise Refusal(reasons.INVALID_REQUEST, f"lease {lease_id} of this request id has ended")
                    yield granted.value
                    return
                queued = self._view.queued(lease_id)
                if queued is None:
                    await self._put(request)  # its node lease was replaced (etcd outage): queue again
                elif queued.request.refused:
                    await self._delete(lease_id)
                    raise Refusal(queued.request.refusal_reason, queued.request.refusal_message)
                pos = self.board.take(watch)
                if pos is not None:
                    yield pos
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timed_out(request, self.board.last(lease_id) or Position(0, 0, ""))
                await self._wait((changed, watch.event), min(remaining, _RECHECK_S))
                changed.clear()
        finally:
            self.board.unwatch(watch)
            self._view.unlisten_request(lease_id, changed)

    async def _wait(self, events: tuple[asyncio.Event, ...], timeout: float) -> None:
        """Until one of `events` is set, the daemon stops, or `timeout`; Refusal when stopping."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (*events, self._stopping)]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._stopping.is_set():
            raise Refusal(reasons.SHUTTING_DOWN, "vgpud is shutting down; retry to keep your place")

    def _timed_out(self, request: QueuedRequest, pos: Position) -> Refusal:
        if self._view.leader() is None:
            return Refusal(reasons.NO_LEADER, "no pool leader is elected right now; retry in a few seconds")
        if not request.wait:
            return Refusal(reasons.NO_LEADER, "the pool leader did not answer in time; retry")
        return Refusal(
            reasons.QUEUE_TIMEOUT, f"no capacity before the deadline (queue position {pos.position}): {pos.reason}"
        )

    def withdraw(self, lease_id: str) -> None:
        """Leave the queue (client gone, deadline passed); a grant that raced in is given back.

        Runs in its own task, retried until etcd answers: the caller may be a cancelled stream, and a
        queue key left behind (etcd briefly unreachable) would be granted later to a client that is gone.
        """
        task = asyncio.ensure_future(self._withdraw(lease_id))
        self._withdrawing.add(task)
        task.add_done_callback(self._withdrawing.discard)

    async def settled(self) -> None:
        """Until every withdrawal started so far is done (a clean stop waits for this)."""
        while self._withdrawing:
            await asyncio.gather(*self._withdrawing, return_exceptions=True)

    async def _withdraw(self, lease_id: str) -> None:
        delay = _WITHDRAW_RETRY_S
        while True:
            try:
                await self._delete(lease_id)
                await self._give_back(lease_id)
            except StoreError as exc:
                if self._stopping.is_set():
                    return  # the key is bound to this node's etcd lease, which lapses without us
                log.warning("cannot withdraw a queued request yet; retrying", lease=lease_id, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, _WITHDRAW_RETRY_MAX_S)
            else:
                return

    async def _give_back(self, lease_id: str) -> None:
        """End a grant that raced in before the withdrawal (StoreError when etcd cannot tell)."""
        granted = self._view.lease(lease_id)
        if granted is None:
            with contextlib.suppress(Refusal):
                granted = await self._allocator.lookup(lease_id)
        if granted is not None and not granted.value.state.ended:
            with contextlib.suppress(Refusal):
                await self._allocator.end(
                    lease_id, LeaseState.RELEASED, reasons.END_RELEASED, "the acquire was withdrawn before delivery"
                )

    async def _delete(self, lease_id: str) -> None:
        key = self._keys.queue(lease_id)
        queued = self._view.queued(lease_id)
        if queued is None:
            return
        delete = Delete(key)
        txn = await self._store.txn([ModRevisionIs(key, queued.revision)], [delete], timeout=self._timeout)
        if txn.succeeded:
            self._view.apply_committed([delete], txn.revision)
        else:
            self._view.refresh_key(await self._store.get(key, timeout=self._timeout), key)

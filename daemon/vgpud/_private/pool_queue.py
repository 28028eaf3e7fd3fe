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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from vgpu._private import reasons
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import LeaseState
from vgpud._private.core.queued import QueuedRequest
from vgpud._private.grants.allocator import AcquireSpec, Allocator
from vgpud._private.pool_view import PoolView
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys
from vgpud._private.store.base import Delete, ModRevisionIs, Put, Store, StoreError

log = structlog.get_logger("vgpud.pool_queue")

_RECHECK_S = 2.0
_WITHDRAW_RETRY_S = 0.5
_WITHDRAW_RETRY_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class Position:
    """Where a waiting request stands, for QueueStatus."""

    position: int
    length: int
    reason: str
    estimated_wait_s: float = 0.0
    """Position / recent grant rate (Little's law); 0 when no grant was seen lately."""


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

    def waiting_for(self, node: str) -> bool:
        """Whether any live request in the queue could take capacity on `node` (so a newcomer must queue)."""
        if any(target in ("", node) for target in self._view.suspended().values()):
            return True
        return any(
            not q.request.refused and q.request.wait and q.request.target_node in ("", node) for q in self._view.queue()
        )

    async def submit(self, spec: AcquireSpec, lease_id: str, token: str, *, wait: bool) -> QueuedRequest:
        """Put the request in the queue (or find it there from an earlier attempt of the same request id)."""
        pending = self._allocator.pending_record(spec, lease_id, token, self._node)
        request = QueuedRequest(pending, target_node="" if spec.any_node else spec.node, span=spec.span, wait=wait)
        await self._put(request)
        return request

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
        """1-based place among live waiting requests, and why it waits."""
        rate = 0.0
        if self._ranking is not None:
            ids, rate = self._ranking()
        else:
            ids = [q.request.lease_id for q in self._view.queue() if not q.request.refused]
        if lease_id not in ids:
            return Position(0, len(ids), "")
        index = ids.index(lease_id)
        if self._view.leader() is None:
            reason = "no pool leader is elected right now; waiting for one"
        else:
            reason = self._holds().get(lease_id) or (f"{index} request(s) ahead" if index else "waiting for capacity")
        return Position(index + 1, len(ids), reason, (index + 1) / rate if rate > 0 else 0.0)

    async def follow(self, request: QueuedRequest, deadline: float) -> AsyncIterator[Position | LeaseRecord]:
        """Positions while it waits, then the granted lease; Refusal when refused or past `deadline`."""
        lease_id = request.lease_id
        last: tuple[int, int, str] | None = None
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
            pos = self.position(lease_id)
            if (pos.position, pos.length, pos.reason) != last and pos.position:
                last = (pos.position, pos.length, pos.reason)
                yield pos
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(request, pos)
            await self._wait(min(remaining, _RECHECK_S))

    async def _wait(self, timeout: float) -> None:
        """Until the view changes, the daemon stops, or `timeout`; Refusal when stopping."""
        changed = asyncio.ensure_future(self._view.wait_changed(self._view.generation, timeout=timeout))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            stopping.cancel()
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

"""Requests that wait for capacity, served first in, first out.

The head of the queue blocks those behind it (no backfill yet), so a big request is never starved by a
stream of small ones. A dispatcher task retries the head whenever the pool view changes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field

import structlog

from vgpu._private import reasons
from vgpud._private.allocator import AcquireSpec, Allocator
from vgpud._private.core.model import LeaseRecord, LeaseState
from vgpud._private.core.placement import Unplaceable
from vgpud._private.pool_view import PoolView
from vgpud._private.refusal import Refusal
from vgpud._private.store.base import StoreError

log = structlog.get_logger("vgpud.queue")

Grant = tuple[LeaseRecord, str]


@dataclass(eq=False, slots=True)
class Waiter:
    """One queued request; `outcome` resolves with the grant or a Refusal."""

    spec: AcquireSpec
    outcome: asyncio.Future[Grant]
    moved: asyncio.Event = field(default_factory=asyncio.Event)
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a waiter stands, for QueueStatus."""

    position: int
    length: int
    estimated_wait_s: float | None
    reason: str


class AcquireQueue:
    """FIFO of waiting acquires, plus the task that grants them as capacity frees."""

    def __init__(self, allocator: Allocator, view: PoolView, *, max_length: int) -> None:
        self._allocator = allocator
        self._view = view
        self._max_length = max_length
        self._waiters: list[Waiter] = []
        self._kick = asyncio.Event()
        self._grant_times: collections.deque[float] = collections.deque(maxlen=64)
        self._head_reason = ""

    def __len__(self) -> int:
        return len(self._waiters)

    def enqueue(self, spec: AcquireSpec) -> Waiter:
        """Join the tail; Refusal when the queue is full."""
        if len(self._waiters) >= self._max_length:
            raise Refusal(reasons.NO_CAPACITY, f"the queue is full ({self._max_length} requests); retry later")
        waiter = Waiter(spec, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._kick.set()
        return waiter

    def position(self, waiter: Waiter) -> Position:
        """1-based position, queue length, a Little's-law wait estimate and why it waits."""
        try:
            index = self._waiters.index(waiter)
        except ValueError:
            return Position(0, len(self._waiters), 0.0, "")
        rate = self._grant_rate()
        estimate = (index + 1) / rate if rate > 0 else None
        reason = (self._head_reason or "waiting for capacity") if index == 0 else f"{index} request(s) ahead"
        return Position(index + 1, len(self._waiters), estimate, reason)

    async def withdraw(self, waiter: Waiter) -> None:
        """Leave the queue (client gone or deadline passed); a grant that raced in is given back."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._moved()
        if waiter.outcome.done() and not waiter.outcome.cancelled() and waiter.outcome.exception() is None:
            lease, _ = waiter.outcome.result()
            with contextlib.suppress(Refusal, StoreError):
                await self._allocator.end(
                    lease.id,
                    LeaseState.RELEASED,
                    reasons.END_RELEASED,
                    "the acquire was withdrawn before delivery",
                )
        elif not waiter.outcome.done():
            waiter.outcome.cancel()

    def fail_all(self, refusal: Refusal) -> None:
        """Answer every waiter with `refusal` (shutdown)."""
        for waiter in self._waiters:
            if not waiter.outcome.done():
                waiter.outcome.set_exception(refusal)
        self._waiters.clear()

    async def run(self) -> None:
        """Grant the head whenever the view changes or a request arrives. Runs until cancelled."""
        while True:
            if not self._waiters:
                self._kick.clear()
                await self._kick.wait()
                continue
            generation = self._view.generation
            self._kick.clear()
            await self._pump()
            changed = asyncio.ensure_future(self._view.wait_changed(generation, timeout=5.0))
            kicked = asyncio.ensure_future(self._kick.wait())
            try:
                await asyncio.wait({changed, kicked}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                kicked.cancel()

    async def _pump(self) -> None:
        while self._waiters:
            head = self._waiters[0]
            if head.outcome.done():
                self._waiters.pop(0)
                self._moved()
                continue
            fit = self._allocator.try_place(head.spec)
            if isinstance(fit, Unplaceable) and not fit.never:
                self._head_reason = fit.message
                return
            try:
                grant = await self._allocator.acquire(head.spec)
            except Refusal as refusal:
                if refusal.reason in (reasons.NO_CAPACITY, reasons.CONFLICT):
                    self._head_reason = refusal.message
                    return
                self._settle(head, refusal)
                continue
            except StoreError as exc:
                log.warning("queue could not reach etcd; will retry", error=str(exc))
                self._head_reason = "waiting for etcd"
                return
            self._grant_times.append(time.monotonic())
            self._settle(head, grant)

    def _settle(self, waiter: Waiter, result: Grant | Refusal) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not waiter.outcome.done():
            if isinstance(result, Refusal):
                waiter.outcome.set_exception(result)
            else:
                waiter.outcome.set_result(result)
        self._head_reason = ""
        self._moved()

    def _moved(self) -> None:
        for waiter in self._waiters:
            waiter.moved.set()

    def _grant_rate(self) -> float:
        """Grants per second over the recent window (0 when unknown)."""
        if len(self._grant_times) < 2:  # noqa: PLR2004 -- a rate needs two grants
            return 0.0
        span = time.monotonic() - self._grant_times[0]
        return (len(self._grant_times) - 1) / span if span > 0 else 0.0

"""Queue positions for waiting clients: ranked once for all of them, sent only when a waiter's own place changed.

Ranking the pool's queue costs O(N log N). Done by every waiter on every queue change, as before, it cost
O(N^2) per change and flooded clients with messages. The board ranks at most once per gap (longer when
ranking is slow), and wakes a waiter only when its own position or estimated wait changed, at most once
per interval (stretched so the daemon sends at most `max_updates_per_s` position messages in all).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vgpud._private.pool_view import PoolView

_MIN_GAP_S = 0.02
"""Newcomers wait at most about this long for their first position (they are ranked in batches)."""
_COST_FACTOR = 4.0
"""The board spends at most 1/(1+factor) of the loop's time ranking: the gap is at least factor x its cost."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a waiting request stands, for QueueStatus."""

    position: int
    length: int
    reason: str
    estimated_wait_s: float = 0.0
    """Position / recent grant rate (Little's law); 0 when no grant was seen lately."""

    @property
    def shown(self) -> tuple[int, float]:
        """What a change must touch to be worth a message: the place and the estimate to two digits."""
        return (self.position, float(f"{self.estimated_wait_s:.2g}"))


Ranking = Callable[[], tuple[list[str], float]]
"""() -> (lease ids in serving order, grants per second lately)."""


class Watch:
    """One waiting stream's registration: woken when it has a new position to send."""

    __slots__ = ("due", "event", "lease_id", "sent", "sent_at")

    def __init__(self, lease_id: str) -> None:
        self.lease_id = lease_id
        self.event = asyncio.Event()
        self.sent: tuple[int, float] | None = None
        self.sent_at = 0.0
        self.due = False
        """Its position changed but the interval since the last message had not passed yet."""


class PositionBoard:
    """Ranks the queue for every waiting stream of this daemon and decides who hears a new position."""

    def __init__(
        self,
        view: PoolView,
        ranking: Ranking,
        holds: Callable[[], Mapping[str, str]],
        *,
        interval: float,
        max_updates_per_s: float = 500.0,
        clock: Callable[[], float] = time.monotonic,
        on_message: Callable[[], object] = lambda: None,
    ) -> None:
        self._view = view
        self._ranking = ranking
        self._holds = holds
        self._interval = interval
        self._max_rate = max_updates_per_s
        self._clock = clock
        self._on_message = on_message
        self._watches: dict[str, set[Watch]] = {}
        self._count = 0
        self._positions: dict[str, Position] = {}
        self._ranked_generation = -1
        self._ranked_at = -1e9
        self._cost = 0.0
        self._poke = asyncio.Event()
        self._unranked = False
        self.messages = 0
        """Position messages handed out so far (a metric and the flood benchmark read it)."""

    # -- waiters --------------------------------------------------------------------------------------
    def watch(self, lease_id: str) -> Watch:
        """Register a waiting stream; its first position comes with the next ranking (within a few ms)."""
        watch = Watch(lease_id)
        self._watches.setdefault(lease_id, set()).add(watch)
        self._count += 1
        self._poke.set()
        return watch

    def unwatch(self, watch: Watch) -> None:
        """The stream ended."""
        watches = self._watches.get(watch.lease_id)
        if watches is not None and watch in watches:
            watches.discard(watch)
            self._count -= 1
            if not watches:
                del self._watches[watch.lease_id]

    def take(self, watch: Watch) -> Position | None:
        """The position to send now, or None when nothing worth a message changed (or it is too early)."""
        watch.event.clear()
        pos = self._positions.get(watch.lease_id)
        if pos is None or pos.shown == watch.sent:
            watch.due = False
            return None
        now = self._clock()
        if watch.sent is not None and now - watch.sent_at < self.interval:
            watch.due = True
            self._poke.set()
            return None
        watch.sent, watch.sent_at, watch.due = pos.shown, now, False
        self.messages += 1
        self._on_message()
        return pos

    def last(self, lease_id: str) -> Position | None:
        """The position from the latest ranking (None when it was not ranked yet)."""
        return self._positions.get(lease_id)

    @property
    def interval(self) -> float:
        """The least time between two messages to one waiter, stretched for long queues."""
        return max(self._interval, self._count / self._max_rate)

    # -- ranking --------------------------------------------------------------------------------------
    def rank(self) -> dict[str, Position]:
        """Every waiting request's position now (also what the admin queue listing shows)."""
        ids, rate = self._ranking()
        holds = self._holds()
        no_leader = self._view.leader() is None
        length = len(ids)
        out: dict[str, Position] = {}
        for index, lease_id in enumerate(ids):
            if no_leader:
                reason = "no pool leader is elected right now; waiting for one"
            else:
                reason = holds.get(lease_id) or (f"{index} request(s) ahead" if index else "waiting for capacity")
            out[lease_id] = Position(index + 1, length, reason, (index + 1) / rate if rate > 0 else 0.0)
        return out

    async def run(self) -> None:
        """Rank when the pool changed or a newcomer came, and wake the waiters whose place changed. Until cancelled."""
        while True:
            await self._until_work()
            gap = max(_MIN_GAP_S, _COST_FACTOR * self._cost)
            pause = self._ranked_at + gap - self._clock()
            if pause > 0:
                await asyncio.sleep(pause)
            self._poke.clear()
            started = time.perf_counter()
            self._ranked_generation = self._view.generation
            self._positions = self.rank() if self._watches else {}
            self._unranked = any(lease_id not in self._positions for lease_id in self._watches)
            self._cost = time.perf_counter() - started
            self._ranked_at = self._clock()
            self._wake()

    async def _until_work(self) -> None:
        """Until there are waiters and something to tell them: a pool change, a newcomer, or a deferred message."""
        while True:
            if not self._watches:
                self._poke.clear()
                await self._poke.wait()  # watch() sets it
                continue
            if self._view.generation != self._ranked_generation or self._poke.is_set():
                return
            due = self._next_due()
            if self._unranked:  # a waiter the last ranking did not have yet (the leader's next pass will)
                soon = self._ranked_at + max(_MIN_GAP_S, _COST_FACTOR * self._cost)
                due = soon if due is None else min(due, soon)
            timeout = None if due is None else max(0.0, due - self._clock())
            poked = asyncio.ensure_future(self._poke.wait())
            changed = asyncio.ensure_future(self._view.wait_changed(self._ranked_generation))
            try:
                done, _ = await asyncio.wait({poked, changed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                poked.cancel()
                changed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(poked, changed, return_exceptions=True)
            if not done and due is not None:
                self._poke.set()

    def _next_due(self) -> float | None:
        """When the earliest deferred message may go out (None: none is deferred)."""
        due = [w.sent_at + self.interval for ws in self._watches.values() for w in ws if w.due]
        return min(due) if due else None

    def _wake(self) -> None:
        now = self._clock()
        interval = self.interval
        for lease_id, watches in self._watches.items():
            pos = self._positions.get(lease_id)
            for watch in watches:
                if pos is None or pos.shown == watch.sent:
                    continue
                if watch.sent is None or now - watch.sent_at >= interval:
                    watch.event.set()
                else:
                    watch.due = True

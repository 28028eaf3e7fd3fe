"""Pre-granted etcd leases for the liveness keys of new grants.

Granting an etcd lease is a raft write of its own; taking one from a small pool granted in the
background leaves an acquire with a single etcd round trip (its transaction) on the critical path.
A pooled lease is handed out only while young, so a grant still gets nearly its full TTL before
the client's first heartbeat. A released lease's etcd lease comes back to the pool while it is that young
(its liveness key is gone with the release), so short leases cost etcd no lease grant at all.
"""

from __future__ import annotations

import asyncio
import collections
import time

import structlog

from vgpud._private.store.base import Store, StoreError

log = structlog.get_logger("vgpud.liveness")

_BORN_TRACKED = 4096
"""Leases whose age give_back may need; past this the ones too old to pool again are forgotten."""


class LivenessLeases:
    """A few fresh etcd leases of the default TTL, ready to bind new grants to."""

    def __init__(self, store: Store, *, ttl: int, timeout: float, target: int = 16) -> None:
        self._store = store
        self._ttl = ttl
        self._timeout = timeout
        self._target = target
        self._ready: collections.deque[tuple[int, float]] = collections.deque()
        self._low = asyncio.Event()
        self._low.set()
        self._timer: asyncio.TimerHandle | None = None
        self._taken = 0
        """Leases handed out since the last top-up: the pool sizes itself to recent demand."""
        self._want = 1
        self._born: dict[int, float] = {}
        """Leases handed out or refreshed here, with when their TTL last started: what give_back goes by."""

    @property
    def max_age(self) -> float:
        """A pooled lease older than this is dropped (it expires on its own, unbound)."""
        return self._ttl / 4

    async def take(self, ttl: int) -> int:
        """An etcd lease of `ttl` seconds: from the pool when it has a young one, else granted now."""
        if ttl == self._ttl:
            now = time.monotonic()
            while self._ready:
                lease, granted_at = self._ready.popleft()
                if now - granted_at <= self.max_age:
                    self._taken += 1
                    if len(self._ready) < self._want / 2:
                        self._low.set()  # refill in a burst, which etcd commits together
                    return self._issue(lease, granted_at)
        self._low.set()
        asked = time.monotonic()
        lease = await self._store.grant(ttl, timeout=self._timeout)
        return self._issue(lease, asked) if ttl == self._ttl else lease

    def refreshed(self, lease: int, ttl: int, at: float) -> None:
        """A heartbeat reset the etcd lease's TTL at `at` (monotonic): it is that young again for give_back."""
        if ttl == self._ttl:
            self._note(lease, at)

    def give_back(self, lease: int, ttl: int) -> bool:
        """Pool the etcd lease of a lease that was released (its liveness key deleted) while it is young.

        Its age is what this pool knows: when it was handed out here or last refreshed through here. A lease
        of unknown age is left to expire. Returns whether the lease was pooled; call it once per ended
        lease, after the write that deleted its key.
        """
        born = self._born.pop(lease, None)
        if ttl != self._ttl or born is None:
            return False
        if time.monotonic() - born > self.max_age or len(self._ready) >= 2 * self._target:
            return False
        position = len(self._ready)
        while position and self._ready[position - 1][1] > born:
            position -= 1  # oldest first, as take() and the top-up expect
        self._ready.insert(position, (lease, born))
        return True

    def _issue(self, lease: int, granted_at: float) -> int:
        self._note(lease, granted_at)
        return lease

    def _note(self, lease: int, born: float) -> None:
        if len(self._born) >= _BORN_TRACKED:
            oldest = time.monotonic() - self.max_age
            self._born = {k: at for k, at in self._born.items() if at >= oldest}
        self._born[lease] = max(born, self._born.get(lease, born))

    async def run(self) -> None:
        """Keep the pool topped up with young leases. Runs until cancelled."""
        while True:
            await self._low.wait()
            self._low.clear()
            now = time.monotonic()
            while self._ready and now - self._ready[0][1] > self.max_age:
                self._ready.popleft()
            # An idle daemon keeps one lease warm; a busy one up to `target`.
            self._want = max(1, min(self._target, self._taken * 2 + 2))
            self._taken = 0
            missing = self._want - len(self._ready)
            if missing > 0:
                try:
                    granted = await asyncio.gather(
                        *(self._store.grant(self._ttl, timeout=self._timeout) for _ in range(missing))
                    )
                except StoreError as exc:
                    log.warning("cannot pre-grant liveness leases", error=str(exc))
                    await asyncio.sleep(1.0)
                    self._low.set()
                    continue
                stamp = time.monotonic()
                self._ready.extend((lease, stamp) for lease in granted)
            # Wake again before the oldest pooled lease grows too old to hand out.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self.max_age, self._low.set)

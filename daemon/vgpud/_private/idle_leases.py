"""Flag leases whose workloads report (through heartbeats) that they barely use what they hold.

The daemon that hears a lease's heartbeats remembers since when its reported use stayed under the idle
threshold; past the idle time it writes `idle_since` into the lease (one write), and clears it once use
comes back. Reclaim takes flagged leases first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.grants.allocator import Allocator
from vgpud._private.grants.write_batch import Overlay

_TRACKED = 100_000


class IdleLeases:
    """Per-lease low-use timers from heartbeat reports, and the writes that flag or unflag a lease."""

    def __init__(
        self,
        allocator: Allocator,
        *,
        threshold: float,
        after_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._allocator = allocator
        self._threshold_milli = threshold * 1000
        self._after_s = after_s
        self._clock = clock
        self._low_since: dict[str, float] = {}

    async def observe(self, lease: LeaseRecord, utilization_milli: int) -> None:
        """Take one usage report; flag or unflag the lease when its state of use changed."""
        now = self._clock()
        if utilization_milli >= self._threshold_milli:
            self._low_since.pop(lease.id, None)
            if lease.idle_since:
                await self._set(lease.id, 0.0)
            return
        since = self._low_since.setdefault(lease.id, now)
        if len(self._low_since) > _TRACKED:
            self._low_since.clear()
        if not lease.idle_since and now - since >= self._after_s:
            await self._set(lease.id, since)

    def forget(self, lease_id: str) -> None:
        """Drop the timer of an ended lease."""
        self._low_since.pop(lease_id, None)

    async def _set(self, lease_id: str, idle_since: float) -> None:
        def build(overlay: Overlay) -> None:
            lease = overlay.lease(lease_id)
            if lease is not None and not lease.state.ended and lease.idle_since != idle_since:
                overlay.put_lease(replace(lease, idle_since=idle_since))

        await self._allocator.commit(build)

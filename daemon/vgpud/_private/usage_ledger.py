"""This node's allocation vs. use ledger: samples its leases, writes the hour's sums to etcd, prunes old hours.

Every `sample_interval_s` each lease holding slices here is counted with what the node watchdog last measured
(core/usage_tally.py does the sums); every `flush_interval_s` the current hour's bucket is written (one put),
and at an hour's end it is written a last time. A restarted daemon carries on from its bucket in etcd.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog

from vgpud._private.config_accounting import AccountingConfig
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import Isolation, LeaseState
from vgpud._private.core.usage_tally import HOUR_S, HourBucket, Sample, add_sample, hour_of
from vgpud._private.node_watchdog import LeaseUse
from vgpud._private.pool_view import PoolView
from vgpud._private.registry import Keys
from vgpud._private.store.base import Delete, Put, Store, StoreError

log = structlog.get_logger("vgpud.accounting")

HOLDING = frozenset({LeaseState.GRANTED, LeaseState.RESIZING, LeaseState.PREEMPTING})
"""Lease states in which slices are held (and billed)."""


def sample_of(lease: LeaseRecord, node: str, use: LeaseUse | None) -> Sample | None:
    """The lease's sample on `node`, None when it holds nothing there."""
    local = [s for s in lease.slices if s.node == node]
    if not local or lease.state not in HOLDING:
        return None
    return Sample(
        lease_id=lease.id,
        project=lease.project,
        user=lease.owner.user,
        held_gpus=sum(s.compute_milli for s in local) / 1000,
        device_gpus=sum(s.compute_milli / 1000 if s.isolation is Isolation.MIG else 1.0 for s in local),
        memory_budget_bytes=sum(s.memory_bytes for s in local),
        memory_used_bytes=None if use is None else use.memory_bytes,
        utilization=None if use is None else use.utilization,
        processes=0 if use is None else len(use.pids),
    )


class UsageLedger:
    """One per daemon: `run` samples and flushes until cancelled; `bucket` is the current hour, for the admin RPCs."""

    def __init__(
        self,
        *,
        config: AccountingConfig,
        store: Store,
        keys: Keys,
        view: PoolView,
        node: str,
        uses: Callable[[], Mapping[str, LeaseUse]],
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._keys = keys
        self._view = view
        self._node = node
        self._uses = uses
        self._timeout = timeout
        self._clock = clock
        now = clock()
        self.bucket = HourBucket(node, hour_of(now))
        self._last_sample = now
        self._last_flush = now
        self._pruned_hour = 0

    async def load(self) -> None:
        """Carry on from this node's bucket of the current hour in etcd (a restart within the hour)."""
        try:
            found = await self._store.get(self._keys.usage(self.bucket.hour, self._node), timeout=self._timeout)
        except StoreError as exc:
            log.warning("cannot read this hour's usage; starting it afresh", error=str(exc))
            return
        if found is None:
            return
        try:
            stored = HourBucket.from_json(found.value)
        except ValueError:
            log.warning("this hour's usage record is unreadable; starting it afresh", key=found.key)
            return
        if stored.hour == self.bucket.hour and not self.bucket.leases:
            self.bucket = stored

    async def run(self) -> None:
        """Sample, flush and prune until cancelled; a failed write is retried at the next flush."""
        try:
            while True:
                await asyncio.sleep(self._config.sample_interval_s)
                await self.tick()
        finally:
            await self._flush_quietly()

    async def tick(self) -> None:
        """One sample; a flush when one is due or the hour turned; a prune once an hour."""
        now = self._clock()
        hour = hour_of(now)
        if hour != self.bucket.hour:
            await self._flush_quietly()
            self.bucket = HourBucket(self._node, hour)
        self.sample(now)
        if now - self._last_flush >= self._config.flush_interval_s:
            await self._flush_quietly()
        if self._pruned_hour != hour:
            await self._prune(now)
            self._pruned_hour = hour

    def sample(self, now: float) -> None:
        """Count the time since the last sample for every lease holding slices on this node."""
        seconds = now - self._last_sample
        self._last_sample = now
        uses = self._uses()
        for versioned in self._view.live_leases():
            sample = sample_of(versioned.value, self._node, uses.get(versioned.value.id))
            if sample is not None:
                add_sample(self.bucket, sample, at=now, seconds=seconds)

    async def flush(self) -> None:
        """Write the current hour's bucket, unless nothing was held here this hour (StoreError when etcd refused)."""
        if not self.bucket.leases:
            return
        key = self._keys.usage(self.bucket.hour, self._node)
        await self._store.txn([], [Put(key, self.bucket.to_json())], timeout=self._timeout)
        self._last_flush = self._clock()

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except StoreError as exc:
            log.warning("cannot write usage; trying again at the next flush", error=str(exc))

    async def _prune(self, now: float) -> None:
        """Delete every node's hours older than the retention (idempotent: any daemon may do it)."""
        cutoff = hour_of(now - self._config.retention_days * 24 * HOUR_S)
        old = Delete(self._keys.usage_root, range_end=self._keys.usage_hour(cutoff))
        try:
            await self._store.txn([], [old], timeout=self._timeout)
        except StoreError as exc:
            log.warning("cannot prune old usage; trying again in an hour", error=str(exc))

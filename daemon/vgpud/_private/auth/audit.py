"""The audit trail: every admin mutation and every refused call, to the log and to etcd, bounded.

Refusals are what an attacker controls, so they are folded: per (caller, method, reason) the first one in a
10 s window is recorded at once and the rest are counted into one record when the window closes. Records
wait in a bounded buffer and are written in batches; when etcd is away or the buffer is full, the oldest
are dropped and counted (a metric and the next record's log line say so), never the daemon's memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Final

import structlog

from vgpud._private.auth.audit_records import AuditEntry, AuditKeys
from vgpud._private.auth.identity import Identity
from vgpud._private.store.base import Delete, Put, Store, StoreError

log = structlog.get_logger("vgpud.audit")

FOLD_WINDOW_S: Final = 10.0
MAX_FOLDS: Final = 10_000
"""Distinct (caller, method, reason) windows tracked at once; beyond, refusals fold into one overflow window."""
MAX_PENDING: Final = 10_000
BATCH: Final = 64
"""Records per etcd transaction (etcd allows 128 operations by default)."""
FLUSH_INTERVAL_S: Final = 1.0
PRUNE_INTERVAL_S: Final = 3600.0


@dataclass(slots=True)
class _Fold:
    first: AuditEntry
    opened: float
    repeats: int = 0


class AuditTrail:
    """Collects audit records of this daemon and writes them to etcd; any daemon prunes the old ones."""

    def __init__(
        self,
        store: Store,
        keys: AuditKeys,
        node: str,
        *,
        retention_days: int,
        timeout: float,
        on_refusal: Callable[[str, str], None] = lambda _method, _reason: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._keys = keys
        self._node = node
        self._retention_s = retention_days * 86400.0
        self._timeout = timeout
        self._on_refusal = on_refusal
        self._clock = clock
        self._pending: list[AuditEntry] = []
        self._folds: dict[tuple[str, str, str], _Fold] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        self.dropped = 0
        """Records lost to a full buffer (etcd away for long); logged when writing resumes."""
        self.written = 0

    # -- recording ----------------------------------------------------------------------------------
    def allowed(self, who: Identity, method: str, target: str, message: str = "") -> None:
        """An admin mutation that went through (or an admin acting on someone else's lease)."""
        entry = self._entry(
            who, peer=who.peer, method=method, target=target, outcome="allowed", reason="", message=message
        )
        log.info("audit", **_fields(entry))
        self._queue(entry)

    def refused(self, who: Identity | None, *, peer: str, method: str, target: str, reason: str, message: str) -> None:
        """A call refused for identity or permission; folded per caller, method and reason."""
        self._on_refusal(method, reason)
        entry = self._entry(
            who, peer=peer, method=method, target=target, outcome="refused", reason=reason, message=message
        )
        now = entry.time
        self._close_folds(now)
        fold_key = (entry.identity or entry.peer, method, reason)
        if fold_key not in self._folds and len(self._folds) >= MAX_FOLDS:
            fold_key = ("*", "*", "*")
        fold = self._folds.get(fold_key)
        if fold is not None:
            fold.repeats += 1
            return
        self._folds[fold_key] = _Fold(entry, now)
        log.warning("audit", **_fields(entry))
        self._queue(entry)

    def _entry(
        self,
        who: Identity | None,
        *,
        peer: str,
        method: str,
        target: str,
        outcome: str,
        reason: str,
        message: str,
    ) -> AuditEntry:
        return AuditEntry(
            time=self._clock(),
            node=self._node,
            user=who.name if who else "",
            identity=who.proof if who else "",
            role=str(who.role) if who else "",
            method=method,
            target=target[:200],
            outcome=outcome,
            reason=reason,
            message=message[:500],
            peer=peer[:100],
        )

    def _close_folds(self, now: float, *, every: bool = False) -> None:
        """Queue the summary of each window that is over (`every`: of all, at stop)."""
        if not self._folds:
            return
        for key, fold in list(self._folds.items()):
            if not every and now - fold.opened < FOLD_WINDOW_S:
                continue
            del self._folds[key]
            if fold.repeats:
                summary = replace(fold.first, time=now, repeats=fold.repeats, message=f"{fold.repeats} more like it")
                log.warning("audit (folded)", **_fields(summary))
                self._queue(summary)

    def _queue(self, entry: AuditEntry) -> None:
        if len(self._pending) >= MAX_PENDING:
            drop = len(self._pending) - MAX_PENDING + 1
            del self._pending[:drop]
            self.dropped += drop
        self._pending.append(entry)
        if len(self._pending) >= BATCH:
            self._wake.set()

    # -- writing ------------------------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        """Flush every second (sooner when a batch is full) and prune once an hour, until `stopping`."""
        pruned_at = 0.0
        while not stopping.is_set():
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait({waiter, stopper}, timeout=FLUSH_INTERVAL_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            self._close_folds(self._clock())
            await self.flush()
            if self._clock() - pruned_at >= PRUNE_INTERVAL_S:
                pruned_at = self._clock()
                await self.prune()
        self._close_folds(self._clock(), every=True)
        await self.flush()

    async def flush(self) -> None:
        """Write what is pending, a batch per transaction; on an etcd error keep it for the next try."""
        while self._pending:
            batch = self._pending[:BATCH]
            puts = []
            for entry in batch:
                self._seq += 1
                puts.append(Put(self._keys.record(int(entry.time * 1000), self._node, self._seq), entry.to_json()))
            try:
                await self._store.txn([], puts, timeout=self._timeout)
            except StoreError as exc:
                log.warning("cannot write audit records; keeping them for the next try", error=str(exc))
                return
            del self._pending[: len(batch)]
            self.written += len(batch)
            if self.dropped:
                log.warning("audit records were dropped while etcd was away", dropped=self.dropped)
                self.dropped = 0

    async def prune(self) -> None:
        """Delete every node's records older than the retention (idempotent: any daemon may do it)."""
        cutoff = int((self._clock() - self._retention_s) * 1000)
        try:
            await self._store.txn([], [Delete(self._keys.root, range_end=self._keys.at(cutoff))], timeout=self._timeout)
        except StoreError as exc:
            log.warning("cannot prune old audit records; trying again in an hour", error=str(exc))

    async def read(self, since_s: float, who: str, limit: int) -> tuple[list[AuditEntry], bool]:
        """Records of the last `since_s` seconds (of identity `who` when set), oldest first, at most `limit`."""
        start = self._keys.at(int((self._clock() - since_s) * 1000))
        snapshot = await self._store.get_range(start, self._keys.root[:-1] + "0", timeout=self._timeout)
        entries = []
        for kv in snapshot.kvs:
            try:
                entry = AuditEntry.from_json(kv.value)
            except (ValueError, TypeError):
                continue
            if not who or entry.matches(who):
                entries.append(entry)
        entries.sort(key=lambda e: e.time)
        truncated = len(entries) > limit
        return entries[-limit:], truncated


def _fields(entry: AuditEntry) -> dict[str, object]:
    """The record as log fields, without the empty ones (the log line has its own time and node)."""
    return {k: v for k, v in asdict(entry).items() if v not in ("", 0) and k not in ("time", "node")}

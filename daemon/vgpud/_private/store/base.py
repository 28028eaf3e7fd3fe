"""The small key-value store interface the daemon's logic is written against.

etcd sits behind it (etcd_store.py and the etcd_*.py modules it is built from); nothing else in the daemon
imports the etcd client library, so a client swap or a fake for a unit test touches only those modules.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store could not be reached or refused the operation; the message says which."""


class StoreUnavailableError(StoreError):
    """No endpoint answered within the deadline."""


class StorePermissionError(StoreError):
    """The store's access control refused the operation: this client's user may not touch those keys."""


class CompactedError(StoreError):
    """A watch asked for history that the store has already compacted; re-list and watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One stored key with the revisions optimistic concurrency compares."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


# Compares: a transaction's guard. mod_revision 0 means "the key does not exist".
@dataclass(frozen=True, slots=True)
class ModRevisionIs:
    """Guard: the key's mod revision equals `revision` (0: the key is absent)."""

    key: str
    revision: int


@dataclass(frozen=True, slots=True)
class ValueIs:
    """Guard: the key exists and holds exactly `value`."""

    key: str
    value: bytes


Compare = ModRevisionIs | ValueIs


@dataclass(frozen=True, slots=True)
class Put:
    """Write `value` at `key`, bound to the store lease `lease` (0: no lease)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete `key`, every key under it when `prefix` is set, or the keys from `key` up to `range_end`."""

    key: str
    prefix: bool = False
    range_end: str = ""
    """When set: delete every key >= `key` and < `range_end` (etcd's range delete)."""


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether the guards held, and the store revision after the transaction."""

    succeeded: bool
    revision: int


class EventType(enum.Enum):
    """What happened to a watched key."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change; for DELETE `kv.value` is empty and `kv.mod_revision` is the deletion revision."""

    type: EventType
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A prefix listing and the store revision it was read at (watch from revision + 1)."""

    kvs: list[KeyValue]
    revision: int


class Store(Protocol):
    """Linearizable key-value store with transactions, TTL leases and watches (etcd's model)."""

    async def get(self, key: str, *, timeout: float) -> KeyValue | None:
        """The key, or None when absent."""
        ...

    async def get_prefix(self, prefix: str, *, timeout: float) -> Snapshot:
        """Every key under `prefix`, sorted by key, with the revision they were read at."""
        ...

    async def get_range(self, start: str, end: str, *, timeout: float) -> Snapshot:
        """Every key >= `start` and < `end`, sorted by key, with the revision they were read at."""
        ...

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float,
    ) -> TxnResult:
        """Apply `success` atomically when every compare holds, else `failure`."""
        ...

    async def grant(self, ttl: int, *, timeout: float) -> int:
        """A new TTL lease (seconds); keys put with it vanish when it expires."""
        ...

    async def refresh(self, lease: int, *, timeout: float) -> int:
        """Keep a lease alive once; returns the TTL left, 0 when the lease has already expired."""
        ...

    async def revoke(self, lease: int, *, timeout: float) -> None:
        """End a lease now, deleting its keys. Revoking an unknown lease is not an error."""
        ...

    def watch_prefix(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes under `prefix` from `start_revision` on; raises CompactedError when that is gone.

        Reconnects on transport errors by itself, resuming after the last event it delivered.
        """
        ...

    async def close(self) -> None:
        """Close connections; pending calls fail."""
        ...

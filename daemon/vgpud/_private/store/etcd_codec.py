"""Conversions between the store's own types (base.py) and etcd's protobuf messages."""

from __future__ import annotations

from typing import Any

# etcd3aio exports its protobuf request types only from this private module.
from etcd3aio._protobuf import Compare as PbCompare
from etcd3aio._protobuf import DeleteRangeRequest, PutRequest, RequestOp
from etcd3aio.kv import prefix_range_end

from vgpud._private.store.base import (
    CompactedError,
    Compare,
    EventType,
    KeyValue,
    ModRevisionIs,
    Op,
    Put,
    StoreError,
    WatchEvent,
)


def key_bytes(key: str) -> bytes:
    """The bytes etcd stores for `key` (surrogateescape: a key read back from etcd round-trips exactly)."""
    return key.encode("utf-8", "surrogateescape")


def key_value(pb: Any) -> KeyValue:
    """Our KeyValue from an mvccpb.KeyValue."""
    return KeyValue(pb.key.decode("utf-8", "surrogateescape"), pb.value, pb.create_revision, pb.mod_revision, pb.lease)


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """Key and range end selecting every key under `prefix` ("" selects all keys)."""
    key = key_bytes(prefix)
    return (key, prefix_range_end(key)) if key else (b"\x00", b"\x00")


def compare(c: Compare) -> Any:
    """The protobuf Compare for one of our compares."""
    if isinstance(c, ModRevisionIs):
        return PbCompare(result=PbCompare.EQUAL, target=PbCompare.MOD, key=key_bytes(c.key), mod_revision=c.revision)
    return PbCompare(result=PbCompare.EQUAL, target=PbCompare.VALUE, key=key_bytes(c.key), value=c.value)


def request_op(op: Op) -> Any:
    """The protobuf RequestOp for one of our transaction operations."""
    if isinstance(op, Put):
        return RequestOp(request_put=PutRequest(key=key_bytes(op.key), value=op.value, lease=op.lease))
    if op.range_end:
        key, end = key_bytes(op.key), key_bytes(op.range_end)
    else:
        key, end = prefix_range(op.key) if op.prefix else (key_bytes(op.key), b"")
    return RequestOp(request_delete_range=DeleteRangeRequest(key=key, range_end=end))


def watch_events(response: Any, prefix: str) -> list[WatchEvent]:
    """The events in a WatchResponse (none in a progress notification); raises when etcd cancelled the watch."""
    if response.compact_revision:
        raise CompactedError(response.compact_revision)
    if response.canceled:
        raise StoreError(f"etcd cancelled the watch on {prefix!r}: {response.cancel_reason}")
    return [
        WatchEvent(EventType.DELETE if event.type == event.DELETE else EventType.PUT, key_value(event.kv))
        for event in response.events
    ]

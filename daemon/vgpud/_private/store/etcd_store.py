"""EtcdStore: the `Store` protocol over etcd3aio, the only module in the daemon that imports it.

Every etcd3aio or gRPC error leaves as StoreError (StoreUnavailableError when etcd did not answer). Reads,
grants, refreshes and revokes may be retried within their deadline; a transaction never is, because a
retry of one whose first attempt applied would report a false compare failure.

Use one EtcdStore from one event loop: its channel and keep-alive stream belong to the loop that made them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
import structlog

# etcd3aio exports its protobuf request types and stubs only from this private module.
from etcd3aio._protobuf import Compare as PbCompare
from etcd3aio._protobuf import (
    DeleteRangeRequest,
    LeaseKeepAliveRequest,
    LeaseStub,
    PutRequest,
    RequestOp,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)
from etcd3aio.connections import ConnectionManager
from etcd3aio.errors import EtcdConnectionError, EtcdError, EtcdTransientError
from etcd3aio.kv import KVService, prefix_range_end
from etcd3aio.lease import LeaseService

from vgpud._private.store.base import (
    CompactedError,
    Compare,
    EventType,
    KeyValue,
    ModRevisionIs,
    Op,
    Put,
    Snapshot,
    StoreError,
    StoreUnavailableError,
    TxnResult,
    WatchEvent,
)
from vgpud._private.store.etcd_endpoints import read_tls_files, resolve_endpoints

log = structlog.get_logger("vgpud.store")

# What etcd3aio and grpc.aio raise; TimeoutError is etcd3aio's own asyncio.timeout around each call.
_CLIENT_ERRORS = (EtcdError, grpc.RpcError, grpc.aio.BaseError, TimeoutError)
_UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# A watch stream ended by these is resumed on a new stream; anything else is reported.
_WATCH_RESUMABLE = (
    *_UNANSWERED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
)
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),  # a large prefix listing is one message
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),  # gRPC's default 120 s would hide a restarted etcd
]
_PING_KEY = b"\x00vgpu-ping"
_WATCH_BACKOFF_S = (0.1, 2.0)


def _k(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _kv(pb: Any) -> KeyValue:
    """Our KeyValue from an mvccpb.KeyValue."""
    return KeyValue(pb.key.decode("utf-8", "surrogateescape"), pb.value, pb.create_revision, pb.mod_revision, pb.lease)


def _range(prefix: str) -> tuple[bytes, bytes]:
    """Key and range end selecting every key under `prefix` ("" selects all keys)."""
    key = _k(prefix)
    return (key, prefix_range_end(key)) if key else (b"\x00", b"\x00")


def _compare(c: Compare) -> Any:
    if isinstance(c, ModRevisionIs):
        return PbCompare(result=PbCompare.EQUAL, target=PbCompare.MOD, key=_k(c.key), mod_revision=c.revision)
    return PbCompare(result=PbCompare.EQUAL, target=PbCompare.VALUE, key=_k(c.key), value=c.value)


def _op(op: Op) -> Any:
    if isinstance(op, Put):
        return RequestOp(request_put=PutRequest(key=_k(op.key), value=op.value, lease=op.lease))
    key, end = _range(op.key) if op.prefix else (_k(op.key), b"")
    return RequestOp(request_delete_range=DeleteRangeRequest(key=key, range_end=end))


def _watch_events(response: Any, prefix: str) -> list[WatchEvent]:
    """The events in a WatchResponse; CompactedError or StoreError when etcd cancelled the watch."""
    if response.compact_revision:
        raise CompactedError(response.compact_revision)
    if response.canceled:
        raise StoreError(f"etcd cancelled the watch on {prefix!r}: {response.cancel_reason}")
    return [
        WatchEvent(EventType.DELETE if event.type == event.DELETE else EventType.PUT, _kv(event.kv))
        for event in response.events
    ]


def _store_error(exc: BaseException, what: str, *, outcome_unknown: bool = False) -> StoreError:
    """The StoreError for an etcd3aio/gRPC failure of `what`."""
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
    unanswered = isinstance(exc, EtcdConnectionError | EtcdTransientError | TimeoutError) or code in _UNANSWERED
    if unanswered:
        detail = str(exc) or "no answer before the deadline"
        if outcome_unknown:
            return StoreUnavailableError(f"etcd {what}: {detail}; outcome unknown (it may have applied)")
        return StoreUnavailableError(f"etcd {what}: {detail}")
    if isinstance(exc, grpc.aio.AioRpcError):
        return StoreError(f"etcd {what} failed: {exc.code().name}: {exc.details()}")
    if isinstance(exc, grpc.aio.UsageError):
        return StoreError(f"etcd {what}: the store is closed ({exc})")
    return StoreError(f"etcd {what} failed: {exc}")


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Translated:
    """Around one call: etcd3aio/gRPC errors leave as StoreErrors.

    So does the CancelledError that grpc.aio raises in calls cut short by close(), when the caller itself
    was not cancelled.
    """

    __slots__ = ("_outcome_unknown", "_store", "_what")

    def __init__(self, store: EtcdStore, what: str, *, outcome_unknown: bool = False) -> None:
        self._store = store
        self._what = what
        self._outcome_unknown = outcome_unknown

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, _CLIENT_ERRORS):
            raise _store_error(exc, self._what, outcome_unknown=self._outcome_unknown) from None
        if isinstance(exc, asyncio.CancelledError) and self._store.closed and not _being_cancelled():
            raise StoreError(f"etcd {self._what}: the store was closed") from None


class EtcdStore:
    """Store over one gRPC channel to an etcd cluster; build it with `await EtcdStore.connect(...)`."""

    def __init__(self, channel: grpc.aio.Channel, endpoints: Sequence[str]) -> None:
        self._channel = channel
        self._endpoints = list(endpoints)
        self._kv = KVService(channel)
        self._lease = LeaseService(channel)
        self._lease_stub = LeaseStub(channel)
        self._watch_stub = WatchStub(channel)
        self._keepalive: _KeepAliveStream | None = None
        self._closed = False

    # -- connecting ------------------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        connect_timeout: float = 10.0,
    ) -> EtcdStore:
        """Resolve `endpoints` (host:port, http://..., https://...), open a channel, wait for an answer."""
        tls_files = any(f is not None for f in (ca_file, cert_file, key_file))
        target = await resolve_endpoints(endpoints, tls_files=tls_files)
        manager = ConnectionManager(target.addresses)
        manager.grpc_options = [
            # etcd allows pings only while a stream is open and drops connections that ping when idle.
            *(o for o in manager.grpc_options if o[0] != "grpc.keepalive_permit_without_calls"),
            *_CHANNEL_OPTIONS,
        ]
        if target.tls:
            ca, key, cert = await asyncio.to_thread(read_tls_files, ca_file, cert_file, key_file)
            name = target.server_name  # one name for the whole channel: the first endpoint's host
            channel = manager.get_channel(ca_cert=ca, cert_key=key, cert_chain=cert, tls_server_name=name)
        else:
            channel = manager.get_channel()
        store = cls(channel, endpoints)
        try:
            await store._ping(connect_timeout)
        except BaseException:
            await store.close()
            raise
        return store

    async def _ping(self, connect_timeout: float) -> None:
        """Read a key until etcd answers (a linearizable read: it needs a leader), backing off in between."""
        deadline = time.monotonic() + connect_timeout
        backoff = 0.05
        while True:
            remaining = deadline - time.monotonic()
            try:
                await self._kv.get(_PING_KEY, count_only=True, timeout=max(0.05, min(remaining, 2.0)), max_attempts=1)
            except (EtcdConnectionError, EtcdTransientError, TimeoutError) as exc:
                last = str(exc) or "no answer"
            except _CLIENT_ERRORS as exc:
                raise _store_error(exc, "connect") from None
            else:
                return
            if time.monotonic() + backoff >= deadline:
                raise StoreUnavailableError(
                    f"no answer from etcd at {', '.join(self._endpoints)} within {connect_timeout:g} s "
                    f"(last error: {last}); check that etcd runs and is reachable from this host, and that "
                    "the endpoints' scheme and TLS files match how it serves clients"
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    # -- key-value ------------------------------------------------------------------------------------
    async def get(self, key: str, *, timeout: float) -> KeyValue | None:
        """The key, or None when absent."""
        with _Translated(self, "get"):
            response = await self._kv.get(_k(key), timeout=timeout)
        return _kv(response.kvs[0]) if response.kvs else None

    async def get_prefix(self, prefix: str, *, timeout: float) -> Snapshot:
        """Every key under `prefix`, sorted by key (etcd's range order), with the revision of the read."""
        key, end = _range(prefix)
        with _Translated(self, "get_prefix"):
            response = await self._kv.get(key, end, timeout=timeout)
        return Snapshot(kvs=[_kv(kv) for kv in response.kvs], revision=response.header.revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float,
    ) -> TxnResult:
        """Apply `success` atomically when every compare holds, else `failure`; one attempt only."""
        with _Translated(self, "txn", outcome_unknown=True):
            response = await self._kv.txn(
                [_compare(c) for c in compares],
                [_op(o) for o in success],
                [_op(o) for o in failure],
                timeout=timeout,
                max_attempts=1,
            )
        return TxnResult(succeeded=response.succeeded, revision=response.header.revision)

    # -- leases ---------------------------------------------------------------------------------------
    async def grant(self, ttl: int, *, timeout: float) -> int:
        """A new TTL lease (seconds). A retried grant can leave an unused lease, which simply expires."""
        with _Translated(self, "lease grant"):
            response = await self._lease.grant(ttl, timeout=timeout)
        if response.error:
            raise StoreError(f"etcd lease grant failed: {response.error}")
        lease: int = response.ID
        return lease

    async def refresh(self, lease: int, *, timeout: float) -> int:
        """One keep-alive round on the shared keep-alive stream; the TTL left, 0 when the lease is gone."""
        try:
            async with asyncio.timeout(timeout):
                try:
                    return await self._keepalive_stream().refresh(lease)
                except StoreUnavailableError:
                    # The shared stream may have died with an old connection (etcd restarted): one more
                    # round on a new stream; a keep-alive is idempotent.
                    return await self._keepalive_stream().refresh(lease)
        except TimeoutError:
            raise StoreUnavailableError(f"etcd lease keep-alive: no answer within {timeout:g} s") from None

    def _keepalive_stream(self) -> _KeepAliveStream:
        self._check_open("lease keep-alive")
        if self._keepalive is None or self._keepalive.failed:
            self._keepalive = _KeepAliveStream(self._lease_stub)
        return self._keepalive

    async def revoke(self, lease: int, *, timeout: float) -> None:
        """End a lease now, deleting its keys; an unknown or expired lease is not an error."""
        with _Translated(self, "lease revoke"):
            try:
                await self._lease.revoke(lease, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

    # -- watch ----------------------------------------------------------------------------------------
    async def watch_prefix(self, prefix: str, *, start_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """Changes under `prefix` from `start_revision` (0: from now); CompactedError when that is gone.

        A broken stream is replaced after a backoff, resuming after the last revision delivered, so no
        event is skipped or repeated. Closing the iterator or cancelling its consumer cancels the stream.
        """
        key, end = _range(prefix)
        next_revision = start_revision
        backoff = _WATCH_BACKOFF_S[0]
        while True:
            self._check_open("watch")
            call = self._watch_stub.Watch()
            try:
                create = WatchCreateRequest(key=key, range_end=end, start_revision=next_revision)
                await call.write(WatchRequest(create_request=create))
                while (response := await call.read()) is not grpc.aio.EOF:
                    backoff = _WATCH_BACKOFF_S[0]
                    if response.created and next_revision == 0:
                        next_revision = response.header.revision + 1
                    for event in _watch_events(response, prefix):
                        next_revision = event.kv.mod_revision + 1
                        yield event
                reason = "etcd ended the watch stream"
            except grpc.aio.AioRpcError as exc:
                if self.closed or exc.code() not in _WATCH_RESUMABLE:
                    raise _store_error(exc, "watch") from None
                reason = f"{exc.code().name}: {exc.details()}"
            except (grpc.aio.BaseError, EtcdError) as exc:
                raise _store_error(exc, "watch") from None
            except asyncio.CancelledError:
                if self.closed and not _being_cancelled():  # grpc.aio's way of failing calls on close()
                    raise StoreError("etcd watch: the store was closed") from None
                raise
            finally:
                call.cancel()
            log.warning("etcd watch broke; resuming", prefix=prefix, revision=next_revision, error=reason)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _WATCH_BACKOFF_S[1])

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise StoreError(f"etcd {what}: the store is closed")

    async def close(self) -> None:
        """Close the channel; pending and later calls fail with StoreError. Safe to call again."""
        if self._closed:
            return
        self._closed = True
        if self._keepalive is not None:
            await self._keepalive.close()
        await self._channel.close()


class _KeepAliveStream:
    """One LeaseKeepAlive stream shared by all refreshes: requests are pipelined, replies matched by lease ID.

    etcd answers a keep-alive stream's requests one by one in order, so replies for one lease ID arrive
    in the order their requests were written. Any failure ends the stream; the store opens a new one.
    """

    def __init__(self, stub: LeaseStub) -> None:
        self._call = stub.LeaseKeepAlive()
        self._waiting: dict[int, collections.deque[asyncio.Future[int]]] = {}
        self._write_lock = asyncio.Lock()  # gRPC allows one write in flight per stream
        self.failed: StoreError | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="etcd-lease-keepalive")

    async def refresh(self, lease: int) -> int:
        """Write one keep-alive request and wait for its reply's TTL (0: the lease is gone)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        async with self._write_lock:
            if self.failed is not None:
                raise type(self.failed)(str(self.failed))
            self._waiting.setdefault(lease, collections.deque()).append(future)
            # If a write fails or is cancelled, whether its request went out is unknown and later replies
            # could be matched to the wrong refresh: the stream is dropped.
            try:
                await self._call.write(LeaseKeepAliveRequest(ID=lease))
            except _CLIENT_ERRORS as exc:
                future.cancel()
                self._fail(_store_error(exc, "lease keep-alive"))
                raise _store_error(exc, "lease keep-alive") from None
            except BaseException:
                future.cancel()
                self._fail(None)
                raise
        return await future

    async def _read(self) -> None:
        try:
            while (response := await self._call.read()) is not grpc.aio.EOF:
                waiting = self._waiting.get(response.ID)
                if waiting:
                    future = waiting.popleft()
                    if not waiting:
                        del self._waiting[response.ID]
                    if not future.done():  # a refresh that timed out leaves its cancelled future here
                        future.set_result(max(0, response.TTL))
            self._fail(StoreUnavailableError("etcd lease keep-alive: etcd ended the stream"))
        except _CLIENT_ERRORS as exc:
            self._fail(_store_error(exc, "lease keep-alive"))
        except asyncio.CancelledError:
            self._fail(StoreError("etcd lease keep-alive: the store is closed"))
            raise

    def _fail(self, error: StoreError | None) -> None:
        """Mark the stream dead and fail every waiting refresh with a copy of `error`."""
        if self.failed is None:
            self.failed = error or StoreUnavailableError("etcd lease keep-alive: the stream was interrupted")
            self._call.cancel()
        for waiting in self._waiting.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(type(self.failed)(str(self.failed)))
        self._waiting.clear()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

"""EtcdStore: the `Store` protocol over etcd's gRPC API, the only module in the daemon that imports etcd3aio.

Every gRPC error leaves as StoreError (StoreUnavailableError when etcd did not answer). Reads, grants,
refreshes and revokes may be retried within their deadline; a transaction is retried only when etcd said
it was not proposed ("no leader"), because a retry of one whose first attempt applied would report a
false compare failure.

Failover: each configured member gets its own channel (so TLS checks each member's certificate against
that member's own host name). Calls go to one pinned member; a member that does not answer (refused,
reset, silent past its share of the deadline, or without a leader) is passed over for the next one.
Watches and the keep-alive stream ask etcd to end them when their member loses the cluster's leader, and a
watch that stays silent even when asked for progress is presumed dead and resumed on another member.

Use one EtcdStore from one event loop: its channels and streams belong to the loop that made them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog

# etcd3aio exports its protobuf request types and stubs only from this private module.
from etcd3aio._protobuf import Compare as PbCompare
from etcd3aio._protobuf import (
    DeleteRangeRequest,
    KVStub,
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseRevokeRequest,
    LeaseStub,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)
from etcd3aio.kv import prefix_range_end

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
from vgpud._private.store.etcd_endpoints import EtcdAddress, read_tls_files, resolve_endpoints

log = structlog.get_logger("vgpud.store")

T = TypeVar("T")

# What grpc.aio raises; TimeoutError is our own asyncio.timeout around stream writes.
_CLIENT_ERRORS = (grpc.RpcError, grpc.aio.BaseError, TimeoutError)
_UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# A watch stream ended by these is resumed on a new stream; anything else is reported.
_WATCH_RESUMABLE = (
    *_UNANSWERED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
)
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),  # a large prefix listing is one message
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),  # gRPC's default 120 s would hide a restarted etcd
    # etcd refuses pings more often than every 5 s, and pings only while a stream is open.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # A ping the transport sent on its own (flow-control probing) would otherwise wait 60 s for its ack
    # and hold back the keepalive ping meanwhile: a frozen member's connection would look fine for a minute.
    ("grpc.http2.ping_timeout_ms", 5_000),
]
# etcd fails calls and ends streams carrying this when the member it reached has no leader (a partitioned
# member), instead of letting them hang until its own timeout.
_REQUIRE_LEADER = (("hasleader", "true"),)
_NO_LEADER = "etcdserver: no leader"  # etcd's answer to _REQUIRE_LEADER, given before anything is proposed
_PING_KEY = b"\x00vgpu-ping"
_WATCH_BACKOFF_S = (0.1, 2.0)
_WATCH_CHECK_AFTER_S = 5.0
_RETRY_BACKOFF_S = (0.05, 0.5)
_MIN_ATTEMPT_S = 0.5  # an attempt gets half the time left, but not less than this (nor more than is left)
_PASSED_OVER_S = 10.0  # how long a member that did not answer ranks behind the others
_PING_ATTEMPT_S = 2.0
_STATE_RANK = {
    grpc.ChannelConnectivity.READY: 0,
    grpc.ChannelConnectivity.IDLE: 1,
    grpc.ChannelConnectivity.CONNECTING: 1,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE: 2,
    grpc.ChannelConnectivity.SHUTDOWN: 3,
}
# Substrings of gRPC's TLS handshake failures, and what each means for the operator.
_TLS_CLIENT_REFUSED = ("ALERT_BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "ALERT_UNKNOWN_CA", "CERTIFICATE_UNKNOWN")
_TLS_SERVER_UNTRUSTED = ("CERTIFICATE_VERIFY_FAILED", "not in peer certificate", "Peer name")
_TLS_HANDSHAKE = ("handshake failed", "SSL_ERROR", "TSI_")


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
    """The events in a WatchResponse (none in a progress notification); raises when etcd cancelled the watch."""
    if response.compact_revision:
        raise CompactedError(response.compact_revision)
    if response.canceled:
        raise StoreError(f"etcd cancelled the watch on {prefix!r}: {response.cancel_reason}")
    return [
        WatchEvent(EventType.DELETE if event.type == event.DELETE else EventType.PUT, _kv(event.kv))
        for event in response.events
    ]


def _store_error(exc: BaseException, what: str, *, outcome_unknown: bool = False) -> StoreError:
    """The StoreError for a gRPC failure of `what`."""
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
    if isinstance(exc, TimeoutError) or code in _UNANSWERED:
        detail = (exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)) or "no answer in time"
        if outcome_unknown:
            return StoreUnavailableError(f"etcd {what}: {detail}; outcome unknown (it may have applied)")
        return StoreUnavailableError(f"etcd {what}: {detail}")
    if isinstance(exc, grpc.aio.AioRpcError):
        return StoreError(f"etcd {what} failed: {exc.code().name}: {exc.details()}")
    if isinstance(exc, grpc.aio.UsageError):
        return StoreError(f"etcd {what}: the store is closed ({exc})")
    return StoreError(f"etcd {what} failed: {exc}")


def _not_proposed(exc: grpc.aio.AioRpcError) -> bool:
    """Whether etcd refused the call before proposing it (its member had no leader): safe to send again."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and (exc.details() or "") == _NO_LEADER


def _tls_problem(detail: str, server_name: str) -> str | None:
    """What a TLS handshake failure in gRPC's `detail` means and what to change; None if it is not one."""
    if any(s in detail for s in _TLS_CLIENT_REFUSED):
        return (
            "etcd refused this client's certificate: it requires one signed by a CA it trusts "
            "(set the client certificate and key files, --etcd-cert/--etcd-key)"
        )
    if any(s in detail for s in _TLS_SERVER_UNTRUSTED):
        return (
            f"etcd's certificate could not be verified for {server_name!r}: check that the CA file (--etcd-ca) "
            "is the CA that signed etcd's certificates and that they name this host"
        )
    if any(s in detail for s in _TLS_HANDSHAKE):
        return "the TLS handshake with etcd failed: check that the endpoints, CA and client certificate match"
    return None


def _attempt_budget(remaining: float) -> float:
    """How long one attempt of a retriable call may take: half of what is left, so another member gets a turn."""
    if remaining <= 2 * _MIN_ATTEMPT_S:
        return max(remaining, 0.001)
    return max(_MIN_ATTEMPT_S, remaining / 2)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Translated:
    """Around one call: gRPC errors leave as StoreErrors.

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


class _Member:
    """One configured etcd address with its own channel and stubs."""

    def __init__(self, target: EtcdAddress, channel: grpc.aio.Channel) -> None:
        self.address = target.address
        self.server_name = target.server_name
        self.channel = channel
        self.kv = KVStub(channel)
        self.lease = LeaseStub(channel)
        self.watch = WatchStub(channel)
        self.passed_over_at = -_PASSED_OVER_S  # when it last failed to answer (monotonic)

    def rank(self, now: float) -> tuple[int, int]:
        """Lower is better: members that failed lately go last, then by connection state (idle ones connect)."""
        recent = int(now - self.passed_over_at < _PASSED_OVER_S)
        return recent, _STATE_RANK.get(self.channel.get_state(try_to_connect=True), 3)


class EtcdStore:
    """Store over one gRPC channel per etcd member; build it with `await EtcdStore.connect(...)`."""

    def __init__(
        self, members: Sequence[_Member], endpoints: Sequence[str], *, watch_check_after: float = _WATCH_CHECK_AFTER_S
    ) -> None:
        if not members:
            raise ValueError("EtcdStore needs at least one member")
        self._members = list(members)
        self._pinned = 0
        self._endpoints = list(endpoints)
        self._watch_check_after = watch_check_after
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
        watch_check_after: float = _WATCH_CHECK_AFTER_S,
    ) -> EtcdStore:
        """Resolve `endpoints` (host:port, http://..., https://...), open channels, wait for an answer.

        `watch_check_after`: seconds of silence on a watch stream before etcd is asked for progress; as long
        again without any answer and the stream is presumed dead and resumed on another member.
        """
        tls_files = any(f is not None for f in (ca_file, cert_file, key_file))
        target = await resolve_endpoints(endpoints, tls_files=tls_files)
        credentials: grpc.ChannelCredentials | None = None
        if target.tls:
            ca, key, cert = await asyncio.to_thread(read_tls_files, ca_file, cert_file, key_file)
            credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        members = []
        for address in target.addresses:
            if credentials is None:
                channel = grpc.aio.insecure_channel(f"ipv4:{address.address}", options=_CHANNEL_OPTIONS)
            else:
                # Each member's certificate is checked against the host name it was configured by.
                options = [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", address.server_name)]
                channel = grpc.aio.secure_channel(f"ipv4:{address.address}", credentials, options=options)
            members.append(_Member(address, channel))
        store = cls(members, endpoints, watch_check_after=watch_check_after)
        try:
            await store._ping(connect_timeout)
        except BaseException:
            await store.close()
            raise
        return store

    async def _ping(self, connect_timeout: float) -> None:
        """Read a key (linearizable: it needs a leader) until a member answers, trying each in turn.

        Raises at once when every member refused the TLS handshake: waiting will not fix certificates.
        """
        deadline = time.monotonic() + connect_timeout
        backoff = _RETRY_BACKOFF_S[0]
        errors: dict[str, str] = {}
        tls_errors: dict[str, str] = {}
        while True:
            member = self._pick()
            remaining = deadline - time.monotonic()
            try:
                await member.kv.Range(
                    RangeRequest(key=_PING_KEY, count_only=True),
                    timeout=max(0.05, min(remaining, _PING_ATTEMPT_S)),
                    metadata=_REQUIRE_LEADER,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _UNANSWERED:
                    raise _store_error(exc, "connect") from None
                detail = exc.details() or exc.code().name
                problem = _tls_problem(detail, member.server_name)
                errors[member.address] = detail if problem is None else f"{problem} ({detail})"
                if problem is not None:
                    tls_errors[member.address] = errors[member.address]
                else:
                    tls_errors.pop(member.address, None)
                self._pass_over(member)
            else:
                self._answered(member)
                return
            if len(tls_errors) == len(self._members):
                address, problem = next(iter(tls_errors.items()))
                raise StoreError(f"cannot connect to etcd at {', '.join(self._endpoints)}: {address}: {problem}")
            if time.monotonic() + backoff >= deadline:
                last = "; ".join(f"{address}: {detail}" for address, detail in errors.items())
                raise StoreUnavailableError(
                    f"no answer from etcd at {', '.join(self._endpoints)} within {connect_timeout:g} s "
                    f"(last errors: {last}); check that etcd runs and is reachable from this host, and that "
                    "the endpoints' scheme and TLS files match how it serves clients"
                )
            if len(errors) >= len(self._members):  # every member had a turn: pause before the next round
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    # -- choosing a member -----------------------------------------------------------------------------
    def _pick(self) -> _Member:
        """The member to send to: the pinned one unless another ranks better (connected, answered lately)."""
        now = time.monotonic()
        count = len(self._members)
        order = [(self._pinned + step) % count for step in range(count)]
        best = min(order, key=lambda i: self._members[i].rank(now))  # ties: the first from the pinned one on
        self._pinned = best
        return self._members[best]

    def _pass_over(self, member: _Member) -> None:
        """`member` did not answer: rank it last for a while and move the pin past it."""
        member.passed_over_at = time.monotonic()
        if self._members[self._pinned] is member:
            self._pinned = (self._pinned + 1) % len(self._members)

    def _answered(self, member: _Member) -> None:
        member.passed_over_at = -_PASSED_OVER_S

    async def _unary(
        self,
        what: str,
        send: Callable[[_Member, float], Awaitable[T]],
        *,
        timeout: float,
        idempotent: bool,
    ) -> T:
        """`send(member, attempt_timeout)` on the chosen member; when it does not answer, on the next one.

        Idempotent calls are tried again until `timeout`; others only when etcd said it did not propose them.
        """
        self._check_open(what)
        deadline = time.monotonic() + timeout
        backoff = _RETRY_BACKOFF_S[0]
        failures = 0
        with _Translated(self, what, outcome_unknown=not idempotent):
            while True:
                member = self._pick()
                try:
                    result = await send(member, _attempt_budget(deadline - time.monotonic()))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _UNANSWERED:
                        raise
                    self._pass_over(member)
                    failures += 1
                    retry = idempotent or _not_proposed(exc)
                    pause = backoff if failures % len(self._members) == 0 else 0.0
                    if not retry or time.monotonic() + pause >= deadline - 0.001:
                        if retry and _not_proposed(exc):
                            raise _store_error(exc, what) from None  # not applied: the outcome is known
                        raise
                    log.debug(
                        "etcd member did not answer; trying the next",
                        member=member.address,
                        what=what,
                        error=f"{exc.code().name}: {exc.details()}",
                    )
                    if pause:  # every member had a turn: back off before the next round
                        await asyncio.sleep(pause)
                        backoff = min(backoff * 2, _RETRY_BACKOFF_S[1])
                else:
                    self._answered(member)
                    return result

    # -- key-value ------------------------------------------------------------------------------------
    async def get(self, key: str, *, timeout: float) -> KeyValue | None:
        """The key, or None when absent."""
        request = RangeRequest(key=_k(key))
        response = await self._unary(
            "get",
            lambda m, t: m.kv.Range(request, timeout=t, metadata=_REQUIRE_LEADER),
            timeout=timeout,
            idempotent=True,
        )
        return _kv(response.kvs[0]) if response.kvs else None

    async def get_prefix(self, prefix: str, *, timeout: float) -> Snapshot:
        """Every key under `prefix`, sorted by key (etcd's range order), with the revision of the read."""
        key, end = _range(prefix)
        request = RangeRequest(key=key, range_end=end)
        response = await self._unary(
            "get_prefix",
            lambda m, t: m.kv.Range(request, timeout=t, metadata=_REQUIRE_LEADER),
            timeout=timeout,
            idempotent=True,
        )
        return Snapshot(kvs=[_kv(kv) for kv in response.kvs], revision=response.header.revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float,
    ) -> TxnResult:
        """Apply `success` atomically when every compare holds, else `failure`; sent again only if not proposed."""
        request = TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_op(o) for o in success],
            failure=[_op(o) for o in failure],
        )
        # A transaction's one attempt gets the whole deadline: cutting it short would not undo it.
        deadline = time.monotonic() + timeout
        response = await self._unary(
            "txn",
            lambda m, _t: m.kv.Txn(request, timeout=max(0.001, deadline - time.monotonic()), metadata=_REQUIRE_LEADER),
            timeout=timeout,
            idempotent=False,
        )
        return TxnResult(succeeded=response.succeeded, revision=response.header.revision)

    # -- leases ---------------------------------------------------------------------------------------
    async def grant(self, ttl: int, *, timeout: float) -> int:
        """A new TTL lease (seconds). A retried grant can leave an unused lease, which simply expires."""
        request = LeaseGrantRequest(TTL=ttl)
        response = await self._unary(
            "lease grant",
            lambda m, t: m.lease.LeaseGrant(request, timeout=t, metadata=_REQUIRE_LEADER),
            timeout=timeout,
            idempotent=True,
        )
        if response.error:
            raise StoreError(f"etcd lease grant failed: {response.error}")
        lease: int = response.ID
        return lease

    async def refresh(self, lease: int, *, timeout: float) -> int:
        """One keep-alive round on the shared keep-alive stream; the TTL left, 0 when the lease is gone.

        A stream that breaks, or stays silent for an attempt's share of `timeout`, is replaced by one on
        another member and the keep-alive sent again (it is idempotent).
        """
        self._check_open("lease keep-alive")
        deadline = time.monotonic() + timeout
        backoff = _RETRY_BACKOFF_S[0]
        failures = 0
        while True:
            stream = self._keepalive_stream()
            try:
                ttl = await stream.refresh(lease, _attempt_budget(deadline - time.monotonic()))
            except StoreUnavailableError as exc:
                failures += 1
                if stream.failed is not None:
                    self._pass_over(stream.member)  # the next stream opens on another member at once
                # A stream that is alive but slow, or every member tried: back off before the next try.
                pause = backoff if stream.failed is None or failures % len(self._members) == 0 else 0.0
                if time.monotonic() + pause >= deadline - 0.001:
                    raise StoreUnavailableError(
                        f"etcd lease keep-alive: no answer within {timeout:g} s (last error: {exc})"
                    ) from None
                if pause:
                    await asyncio.sleep(pause)
                    backoff = min(backoff * 2, _RETRY_BACKOFF_S[1])
            else:
                self._answered(stream.member)
                return ttl

    def _keepalive_stream(self) -> _KeepAliveStream:
        """The shared keep-alive stream, replaced when it failed or its member stopped answering other calls.

        Replacing it early spares each refresh a timed-out attempt on a frozen member.
        """
        self._check_open("lease keep-alive")
        current = self._keepalive
        if current is not None and current.failed is None and current.member.passed_over_at > current.opened_at:
            current.retire("its member stopped answering other calls")
        if current is None or current.failed is not None:
            self._keepalive = current = _KeepAliveStream(self._pick())
        return current

    async def revoke(self, lease: int, *, timeout: float) -> None:
        """End a lease now, deleting its keys; an unknown or expired lease is not an error."""
        request = LeaseRevokeRequest(ID=lease)

        async def send(member: _Member, attempt_timeout: float) -> None:
            try:
                await member.lease.LeaseRevoke(request, timeout=attempt_timeout, metadata=_REQUIRE_LEADER)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        await self._unary("lease revoke", send, timeout=timeout, idempotent=True)

    # -- watch ----------------------------------------------------------------------------------------
    async def watch_prefix(self, prefix: str, *, start_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """Changes under `prefix` from `start_revision` (0: from now); CompactedError when that is gone.

        A broken stream is replaced after a backoff, on the next member, resuming after the last revision
        delivered, so no event is skipped or repeated. So is a stream that stays silent although etcd was
        asked for progress (a frozen member). Closing the iterator or cancelling its consumer cancels it.
        """
        key, end = _range(prefix)
        next_revision = start_revision
        backoff = _WATCH_BACKOFF_S[0]
        while True:
            self._check_open("watch")
            member = self._pick()
            try:
                async with contextlib.aclosing(self._watch_stream(member, key, end, next_revision)) as responses:
                    async for response in responses:
                        backoff = _WATCH_BACKOFF_S[0]
                        if response.created and next_revision == 0:
                            next_revision = response.header.revision + 1
                        # A progress notification carries no events: it only proved the stream alive.
                        for event in _watch_events(response, prefix):
                            next_revision = event.kv.mod_revision + 1
                            yield event
                reason = "etcd ended the watch stream"
            except grpc.aio.AioRpcError as exc:
                if self.closed or exc.code() not in _WATCH_RESUMABLE:
                    raise _store_error(exc, "watch") from None
                reason = f"{exc.code().name}: {exc.details()}"
            except _WatchSilentError as exc:
                reason = str(exc)
            except grpc.aio.BaseError as exc:
                raise _store_error(exc, "watch") from None
            except asyncio.CancelledError:
                if self.closed and not _being_cancelled():  # grpc.aio's way of failing calls on close()
                    raise StoreError("etcd watch: the store was closed") from None
                raise
            self._pass_over(member)
            log.warning(
                "etcd watch broke; resuming", prefix=prefix, revision=next_revision, member=member.address, error=reason
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _WATCH_BACKOFF_S[1])

    async def _watch_stream(self, member: _Member, key: bytes, end: bytes, start: int) -> AsyncGenerator[Any, None]:
        """The WatchResponses of one new watch stream on `member`, until it ends or fails.

        etcd says nothing on a quiet stream, so after `watch_check_after` seconds of silence it is asked for
        progress; when that gets no answer either, _WatchSilentError (the member froze, or its connection
        did without a reset).
        """
        check_after = self._watch_check_after
        call = member.watch.Watch(metadata=_REQUIRE_LEADER)
        read: asyncio.Future[Any] | None = None
        try:
            create = WatchCreateRequest(key=key, range_end=end, start_revision=start)
            await _write_within(call, WatchRequest(create_request=create), 2 * check_after)
            asked = False
            while True:
                if read is None:
                    # A pending read outlives the waits below: cancelling a read would cancel the call.
                    read = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({read}, timeout=check_after)
                if not done:
                    if asked:
                        raise _WatchSilentError(f"no answer on the watch stream for {2 * check_after:g} s")
                    await _write_within(call, _PROGRESS_REQUEST, check_after)
                    asked = True
                    continue
                response, read = read.result(), None
                if response is grpc.aio.EOF:
                    return
                asked = False
                yield response
        finally:
            _discard(read)
            call.cancel()

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise StoreError(f"etcd {what}: the store is closed")

    async def close(self) -> None:
        """Close the channels; pending and later calls fail with StoreError. Safe to call again."""
        if self._closed:
            return
        self._closed = True
        if self._keepalive is not None:
            await self._keepalive.close()
        for member in self._members:
            await member.channel.close()


# An empty WatchProgressRequest (etcd >= 3.4), built from a dict: etcd3aio exports no name for its type.
_PROGRESS_REQUEST = WatchRequest(progress_request={})


class _WatchSilentError(Exception):
    """A watch stream answered nothing, not even a requested progress notification: its member is gone."""


async def _write_within(call: Any, request: Any, timeout: float) -> None:
    """Write to a watch stream; a write that finds no room in `timeout` (flow control) means a frozen member."""
    try:
        async with asyncio.timeout(timeout):
            await call.write(request)
    except TimeoutError:
        raise _WatchSilentError(f"a write to the watch stream found no room for {timeout:g} s") from None


def _discard(future: asyncio.Future[Any] | None) -> None:
    """Cancel a pending future, or collect a finished one's outcome (so no exception is reported unread)."""
    if future is None:
        return
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


class _KeepAliveStream:
    """One LeaseKeepAlive stream shared by all refreshes: requests are pipelined, replies matched by lease ID.

    etcd answers a keep-alive stream's requests one by one in order, so replies for one lease ID arrive
    in the order their requests were written. Any failure ends the stream; the store opens a new one. So
    does silence: a refresh that gets no answer while nothing else arrived on the stream either.
    """

    def __init__(self, member: _Member) -> None:
        self.member = member
        self._call = member.lease.LeaseKeepAlive(metadata=_REQUIRE_LEADER)
        self._waiting: dict[int, collections.deque[asyncio.Future[int]]] = {}
        self._write_lock = asyncio.Lock()  # gRPC allows one write in flight per stream
        self._replies = 0
        self.opened_at = time.monotonic()
        self.failed: StoreError | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="etcd-lease-keepalive")

    async def refresh(self, lease: int, timeout: float) -> int:
        """Write one keep-alive request and wait up to `timeout` for its reply's TTL (0: the lease is gone)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                replies_before = await self._send(lease, future)
            done, _ = await asyncio.wait({future}, timeout=timeout)
        except TimeoutError:
            _discard(future)
            raise StoreUnavailableError(f"etcd lease keep-alive: could not send within {timeout:.3g} s") from None
        except BaseException:
            _discard(future)
            raise
        if done:
            return future.result()
        future.cancel()  # a late reply finds it done and is skipped
        if self._replies == replies_before:  # not a word on the stream since our request was queued
            self._fail(StoreUnavailableError(f"etcd lease keep-alive: the stream was silent for {timeout:.3g} s"))
        raise StoreUnavailableError(f"etcd lease keep-alive: no answer within {timeout:.3g} s")

    async def _send(self, lease: int, future: asyncio.Future[int]) -> int:
        """Queue `future` for `lease`'s next reply and write the request; how many replies had come before."""
        async with self._write_lock:
            if self.failed is not None:
                raise self._copy_failure()
            self._waiting.setdefault(lease, collections.deque()).append(future)
            replies_before = self._replies
            # If a write fails or is cancelled, whether its request went out is unknown and later replies
            # could be matched to the wrong refresh: the stream is dropped.
            try:
                await self._call.write(LeaseKeepAliveRequest(ID=lease))
            except _CLIENT_ERRORS as exc:
                self._fail(_store_error(exc, "lease keep-alive"))
                raise self._copy_failure() from None
            except BaseException:
                self._fail(None)
                raise
            return replies_before

    async def _read(self) -> None:
        try:
            while (response := await self._call.read()) is not grpc.aio.EOF:
                self._replies += 1
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

    def retire(self, why: str) -> None:
        """End the stream; refreshes waiting on it fail as unavailable and are sent again on a new one."""
        self._fail(StoreUnavailableError(f"etcd lease keep-alive: stream closed: {why}"))

    def _copy_failure(self) -> StoreError:
        assert self.failed is not None
        return type(self.failed)(str(self.failed))

    def _fail(self, error: StoreError | None) -> None:
        """Mark the stream dead and fail every waiting refresh with a copy of `error`."""
        if self.failed is None:
            self.failed = error or StoreUnavailableError("etcd lease keep-alive: the stream was interrupted")
            self._call.cancel()
        for waiting in self._waiting.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(self._copy_failure())
        self._waiting.clear()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

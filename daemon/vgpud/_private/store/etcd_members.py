"""The etcd members a store talks to: one gRPC channel each, one pinned, and failover between them.

Each configured member gets its own channel (so TLS checks each member's certificate against that member's
own host name). Calls go to one pinned member; a member that does not answer (refused, reset, silent past
its share of the deadline, or without a leader) is ranked last for a while and the call tried on the next
one. A retriable call's attempt gets half the time left, so a frozen member cannot use up its deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import grpc.aio
import structlog

# etcd3aio exports its protobuf request types and stubs only from this private module.
from etcd3aio._protobuf import KVStub, LeaseStub, RangeRequest, WatchStub

from vgpud._private.store.base import StoreError, StoreUnavailableError
from vgpud._private.store.etcd_endpoints import EtcdAddress
from vgpud._private.store.etcd_errors import UNANSWERED, Translated, not_proposed, store_error, tls_problem

log = structlog.get_logger("vgpud.store")

T = TypeVar("T")

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
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
# member), instead of letting them hang until its own timeout; its answer is etcd_errors.NO_LEADER.
REQUIRE_LEADER = (("hasleader", "true"),)
RETRY_BACKOFF_S = (0.05, 0.5)
_PING_KEY = b"\x00vgpu-ping"
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


def attempt_budget(remaining: float) -> float:
    """How long one attempt of a retriable call may take: half of what is left, so another member gets a turn."""
    if remaining <= 2 * _MIN_ATTEMPT_S:
        return max(remaining, 0.001)
    return max(_MIN_ATTEMPT_S, remaining / 2)


class Member:
    """One configured etcd address with its own channel and stubs."""

    def __init__(self, target: EtcdAddress, channel: grpc.aio.Channel) -> None:
        self.address = target.address
        self.server_name = target.server_name
        self.channel = channel
        self.kv = KVStub(channel)
        self.lease = LeaseStub(channel)
        self.watch = WatchStub(channel)
        self.passed_over_at = -_PASSED_OVER_S  # when it last failed to answer (monotonic)

    @classmethod
    def open(cls, target: EtcdAddress, credentials: grpc.ChannelCredentials | None) -> Member:
        """A member with a new channel to `target`: plain text without `credentials`, else TLS."""
        if credentials is None:
            channel = grpc.aio.insecure_channel(f"ipv4:{target.address}", options=CHANNEL_OPTIONS)
        else:
            # Each member's certificate is checked against the host name it was configured by.
            options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", target.server_name)]
            channel = grpc.aio.secure_channel(f"ipv4:{target.address}", credentials, options=options)
        return cls(target, channel)

    def rank(self, now: float) -> tuple[int, int]:
        """Lower is better: members that failed lately go last, then by connection state (idle ones connect)."""
        recent = int(now - self.passed_over_at < _PASSED_OVER_S)
        return recent, _STATE_RANK.get(self.channel.get_state(try_to_connect=True), 3)


class Members:
    """The members of one store: which to send to next, and unary calls with failover and retries."""

    def __init__(self, members: Sequence[Member], endpoints: Sequence[str]) -> None:
        if not members:
            raise ValueError("EtcdStore needs at least one member")
        self._members = list(members)
        self._pinned = 0
        self._endpoints = list(endpoints)
        self._closed = False

    def __len__(self) -> int:
        """How many members there are."""
        return len(self._members)

    # -- choosing a member -----------------------------------------------------------------------------
    def pick(self) -> Member:
        """The member to send to: the pinned one unless another ranks better (connected, answered lately)."""
        now = time.monotonic()
        count = len(self._members)
        order = [(self._pinned + step) % count for step in range(count)]
        best = min(order, key=lambda i: self._members[i].rank(now))  # ties: the first from the pinned one on
        self._pinned = best
        return self._members[best]

    def pass_over(self, member: Member) -> None:
        """`member` did not answer: rank it last for a while and move the pin past it."""
        member.passed_over_at = time.monotonic()
        if self._members[self._pinned] is member:
            self._pinned = (self._pinned + 1) % len(self._members)

    def answered(self, member: Member) -> None:
        """`member` answered: it ranks by its connection state alone again."""
        member.passed_over_at = -_PASSED_OVER_S

    # -- calls ----------------------------------------------------------------------------------------
    async def ping(self, connect_timeout: float) -> None:
        """Read a key (linearizable: it needs a leader) until a member answers, trying each in turn.

        An answer of "permission denied" counts (etcd auth: the key is outside this client's prefixes).

        Raises at once when every member refused the TLS handshake: waiting will not fix certificates.
        """
        deadline = time.monotonic() + connect_timeout
        backoff = RETRY_BACKOFF_S[0]
        errors: dict[str, str] = {}
        tls_errors: dict[str, str] = {}
        while True:
            member = self.pick()
            remaining = deadline - time.monotonic()
            try:
                await member.kv.Range(
                    RangeRequest(key=_PING_KEY, count_only=True),
                    timeout=max(0.05, min(remaining, _PING_ATTEMPT_S)),
                    metadata=REQUIRE_LEADER,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    # etcd auth, and the ping key lies outside this user's prefixes: etcd checks permissions
                    # after the linearizable wait, so the member is up, has a leader and took the certificate.
                    self.answered(member)
                    return
                if exc.code() not in UNANSWERED:
                    raise store_error(exc, "connect") from None
                detail = exc.details() or exc.code().name
                problem = tls_problem(detail, member.server_name)
                errors[member.address] = detail if problem is None else f"{problem} ({detail})"
                if problem is not None:
                    tls_errors[member.address] = errors[member.address]
                else:
                    tls_errors.pop(member.address, None)
                self.pass_over(member)
            else:
                self.answered(member)
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

    async def unary(
        self,
        what: str,
        send: Callable[[Member, float], Awaitable[T]],
        *,
        timeout: float,
        idempotent: bool,
    ) -> T:
        """`send(member, attempt_timeout)` on the chosen member; when it does not answer, on the next one.

        Idempotent calls are tried again until `timeout`; others only when etcd said it did not propose them.
        """
        self.check_open(what)
        deadline = time.monotonic() + timeout
        backoff = RETRY_BACKOFF_S[0]
        failures = 0
        with Translated(self, what, outcome_unknown=not idempotent):
            while True:
                member = self.pick()
                try:
                    result = await send(member, attempt_budget(deadline - time.monotonic()))
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in UNANSWERED:
                        raise
                    self.pass_over(member)
                    failures += 1
                    retry = idempotent or not_proposed(exc)
                    pause = backoff if failures % len(self._members) == 0 else 0.0
                    if not retry or time.monotonic() + pause >= deadline - 0.001:
                        if retry and not_proposed(exc):
                            raise store_error(exc, what) from None  # not applied: the outcome is known
                        raise
                    log.debug(
                        "etcd member did not answer; trying the next",
                        member=member.address,
                        what=what,
                        error=f"{exc.code().name}: {exc.details()}",
                    )
                    if pause:  # every member had a turn: back off before the next round
                        await asyncio.sleep(pause)
                        backoff = min(backoff * 2, RETRY_BACKOFF_S[1])
                else:
                    self.answered(member)
                    return result

    # -- closing --------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether begin_close() was called."""
        return self._closed

    def check_open(self, what: str) -> None:
        """Raise StoreError for `what` once closing has begun."""
        if self._closed:
            raise StoreError(f"etcd {what}: the store is closed")

    def begin_close(self) -> bool:
        """Refuse new calls from now on; False when that was done before."""
        if self._closed:
            return False
        self._closed = True
        return True

    async def close_channels(self) -> None:
        """Close every member's channel; calls still running on them fail."""
        for member in self._members:
            await member.channel.close()

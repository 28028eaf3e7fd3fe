"""gRPC failures of etcd calls as StoreErrors, and which of them a retry on another member may cure.

Shared by the etcd modules (etcd_members, etcd_leases, etcd_watch) so that every call reports the same
way: StoreUnavailableError when etcd did not answer, StoreError for everything else.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Protocol

import grpc
import grpc.aio

from vgpud._private.store.base import StoreError, StorePermissionError, StoreUnavailableError

# What grpc.aio raises; TimeoutError is our own asyncio.timeout around stream writes.
CLIENT_ERRORS = (grpc.RpcError, grpc.aio.BaseError, TimeoutError)
UNANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# etcd's answer to calls sent with the "hasleader" metadata to a member without a leader, given before
# anything is proposed.
NO_LEADER = "etcdserver: no leader"
# Substrings of gRPC's TLS handshake failures, and what each means for the operator.
_TLS_CLIENT_REFUSED = ("ALERT_BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "ALERT_UNKNOWN_CA", "CERTIFICATE_UNKNOWN")
_TLS_SERVER_UNTRUSTED = ("CERTIFICATE_VERIFY_FAILED", "not in peer certificate", "Peer name")
_TLS_HANDSHAKE = ("handshake failed", "SSL_ERROR", "TSI_")


class Closable(Protocol):
    """Whatever owns the channels a call runs on: closing it cuts the call short."""

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        ...


def store_error(exc: BaseException, what: str, *, outcome_unknown: bool = False) -> StoreError:
    """The StoreError for a gRPC failure of `what`."""
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
    if isinstance(exc, TimeoutError) or code in UNANSWERED:
        detail = (exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)) or "no answer in time"
        if outcome_unknown:
            return StoreUnavailableError(f"etcd {what}: {detail}; outcome unknown (it may have applied)")
        return StoreUnavailableError(f"etcd {what}: {detail}")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        assert isinstance(exc, grpc.aio.AioRpcError)
        return StorePermissionError(
            f"etcd {what} failed: {exc.details()}: etcd's user for this client certificate (its CN) lacks a "
            "permission vgpud needs (see the README's etcd role for vgpud)"
        )
    if isinstance(exc, grpc.aio.AioRpcError):
        return StoreError(f"etcd {what} failed: {exc.code().name}: {exc.details()}")
    if isinstance(exc, grpc.aio.UsageError):
        return StoreError(f"etcd {what}: the store is closed ({exc})")
    return StoreError(f"etcd {what} failed: {exc}")


def not_proposed(exc: grpc.aio.AioRpcError) -> bool:
    """Whether etcd refused the call before proposing it (its member had no leader): safe to send again."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and (exc.details() or "") == NO_LEADER


def tls_problem(detail: str, server_name: str) -> str | None:
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


def being_cancelled() -> bool:
    """Whether the current task itself is being cancelled (not merely seeing a call cut short by close())."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def discard(future: asyncio.Future[Any] | None) -> None:
    """Cancel a pending future, or collect a finished one's outcome (so no exception is reported unread)."""
    if future is None:
        return
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


class Translated:
    """Around one call: gRPC errors leave as StoreErrors.

    So does the CancelledError that grpc.aio raises in calls cut short by close(), when the caller itself
    was not cancelled.
    """

    __slots__ = ("_outcome_unknown", "_owner", "_what")

    def __init__(self, owner: Closable, what: str, *, outcome_unknown: bool = False) -> None:
        self._owner = owner
        self._what = what
        self._outcome_unknown = outcome_unknown

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, CLIENT_ERRORS):
            raise store_error(exc, self._what, outcome_unknown=self._outcome_unknown) from None
        if isinstance(exc, asyncio.CancelledError) and self._owner.closed and not being_cancelled():
            raise StoreError(f"etcd {self._what}: the store was closed") from None

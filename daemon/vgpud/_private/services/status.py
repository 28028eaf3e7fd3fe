"""The gRPC edge of errors: Refusal -> status code + google.rpc.ErrorInfo, and a guard for handlers.

The guard is what keeps "nothing a client sends may crash the daemon": any exception a handler leaks is
logged and answered as INTERNAL; store outages become UNAVAILABLE.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn, TypeVar, cast

import grpc
import structlog
from google.protobuf import any_pb2, text_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vgpu._private import reasons
from vgpud._private.auth.audit import AuditTrail
from vgpud._private.auth.gate import Gate, current_caller
from vgpud._private.auth.identity import Identity
from vgpud._private.auth.rules import rule_for, short
from vgpud._private.log_limit import LogLimit
from vgpud._private.refusal import Refusal
from vgpud._private.store.base import StoreError

if TYPE_CHECKING:
    from vgpud._private.services.serving import Serving

log = structlog.get_logger("vgpud.rpc")

CODES: Final[dict[str, grpc.StatusCode]] = {
    reasons.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.UNKNOWN_GPU_MODEL: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.UNKNOWN_MIG_PROFILE: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.UNKNOWN_PROJECT: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.UNKNOWN_PRIORITY: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.OVER_QUOTA: grpc.StatusCode.RESOURCE_EXHAUSTED,
    reasons.NOT_PREEMPTIBLE: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.NOT_PREEMPTING: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.PROJECT_BUSY: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.PROJECT_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    reasons.NO_CAPACITY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    reasons.QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    reasons.TOO_MANY_WAITING: grpc.StatusCode.RESOURCE_EXHAUSTED,
    reasons.NEVER_FITS: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.QUEUE_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    reasons.LEASE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    reasons.LEASE_TOKEN_MISMATCH: grpc.StatusCode.PERMISSION_DENIED,
    reasons.LEASE_ENDED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.GPU_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    reasons.GPU_BUSY: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.NODE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    reasons.NODE_DRAINING: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.NODE_DOWN: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.NO_LEADER: grpc.StatusCode.UNAVAILABLE,
    reasons.NOT_IMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    reasons.CONFLICT: grpc.StatusCode.ABORTED,
    reasons.STORE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    reasons.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    reasons.INTERNAL: grpc.StatusCode.INTERNAL,
    reasons.JOB_REFUSED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.TOO_MANY_JOBS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    reasons.JOB_NODE_LOST: grpc.StatusCode.UNAVAILABLE,
    **dict.fromkeys(reasons.AUTHENTICATION_REASONS, grpc.StatusCode.UNAUTHENTICATED),
    **dict.fromkeys(reasons.PERMISSION_REASONS, grpc.StatusCode.PERMISSION_DENIED),
}
_AUDITED: Final = reasons.AUTHENTICATION_REASONS | reasons.PERMISSION_REASONS
"""Refusals that leave an audit record (folded per caller, so a flood of them cannot flood the log)."""


async def abort(context: grpc.aio.ServicerContext[Any, Any], refusal: Refusal) -> NoReturn:
    """End the call with the refusal's status code, message and ErrorInfo."""
    code = CODES.get(refusal.reason, grpc.StatusCode.UNKNOWN)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=refusal.reason, domain=reasons.DOMAIN))
    status = rpc_status.to_status(status_pb2.Status(code=code.value[0], message=refusal.message, details=[detail]))
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover -- abort always raises


def _as_refusal(exc: Exception, method: str) -> Refusal:
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, StoreError):
        log.warning("etcd unavailable during RPC", method=method, error=str(exc))
        return Refusal(reasons.STORE_UNAVAILABLE, f"vgpud cannot reach etcd right now ({exc}); retry shortly")
    log.error("unexpected error in RPC handler", method=method, exc_info=exc)
    return Refusal(reasons.INTERNAL, f"vgpud failed handling {method}: {type(exc).__name__}: {exc}")


S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Ctx = grpc.aio.ServicerContext[Any, Any]


class GuardedServicer:
    """What both servicers share for their guards: the service's name, the gate and audit of `Serving`, metrics.

    Subclasses set `service_name` and `_s` (their `Serving`).
    """

    service_name: ClassVar[str]
    _s: Serving

    @property
    def gate(self) -> Gate:
        """Who is calling, and the authorization table (the guards ask it first)."""
        return self._s.gate

    @property
    def audit(self) -> AuditTrail | None:
        """Where admin mutations and refusals are recorded."""
        return self._s.audit

    @property
    def log_limit(self) -> LogLimit:
        """Refusals are logged through this, at a bounded rate."""
        return self._s.log_limit

    def report_error(self, method: str, code: str) -> None:
        """Count an error answer (the guards call this)."""
        self._s.on_error(method, code)


def target_of(request: object) -> str:
    """What a request is about, for audit records: "lease=..., project=..." from the fields it sets."""
    if not isinstance(request, Message):
        return ""
    parts = []
    for field, value in request.ListFields():
        if field.name in _TARGET_FIELDS:
            parts.append(f"{field.name.removesuffix('_id').removesuffix('_uuid')}={str(value)[:80]}")
        elif field.name == "quota" and isinstance(value, Message):
            parts.append(f"project={str(getattr(value, 'project', ''))[:80]}")
    return ",".join(parts)


_TARGET_FIELDS: Final = frozenset({"lease_id", "project", "node", "gpu_uuid", "identity"})


async def _enter(servicer: GuardedServicer, method: str, context: Ctx) -> Identity:
    structlog.contextvars.bind_contextvars(rpc=method, peer=context.peer())
    identity = await servicer.gate.admit(f"{servicer.service_name}/{method}", context)
    structlog.contextvars.bind_contextvars(user=identity.name)
    return identity


def _audit_allowed(servicer: GuardedServicer, method: str, identity: Identity, request: object) -> None:
    """Record an admin mutation that went through."""
    audit = servicer.audit
    full = f"{servicer.service_name}/{method}"
    rule = rule_for(full)
    if audit is not None and rule is not None and rule.mutation:
        summary = text_format.MessageToString(request, as_one_line=True) if isinstance(request, Message) else ""
        audit.allowed(identity, short(full), target_of(request), summary)


def _refused(
    servicer: GuardedServicer, method: str, request: object, context: Ctx, exc: Exception, *, started: float
) -> Refusal:
    """The refusal for a failed call: counted, then audited or logged.

    Audited: identity and permission refusals, and admin mutations refused for any other reason.
    """
    refusal = _as_refusal(exc, method)
    servicer.report_error(method, CODES.get(refusal.reason, grpc.StatusCode.UNKNOWN).name)
    who = current_caller()
    full = f"{servicer.service_name}/{method}"
    rule = rule_for(full)
    mutation = rule is not None and rule.mutation and who is not None and who.role in rule.roles
    if refusal.reason in _AUDITED or mutation:
        audit = servicer.audit
        if audit is not None:
            audit.refused(
                who,
                peer=context.peer() or "",
                method=short(full),
                target=target_of(request),
                reason=refusal.reason,
                message=refusal.message,
            )
    else:
        servicer.log_limit.info(
            "rpc refused",
            event=f"refused:{refusal.reason}",
            reason=refusal.reason,
            ms=round((time.perf_counter() - started) * 1e3, 2),
        )
    return refusal


class guarded_unary:  # noqa: N801 -- used as a decorator, named like one
    """Decorate a unary handler: admit the caller, bind log context, audit, turn exceptions into statuses."""

    def __init__(self, method: str) -> None:
        self._method = method

    def __call__(self, handler: Callable[[S, Req, Ctx], Awaitable[Resp]]) -> Callable[[S, Req, Ctx], Awaitable[Resp]]:
        """Wrap `handler`."""
        method = self._method

        @functools.wraps(handler)
        async def run(servicer: S, request: Req, context: Ctx) -> Resp:
            door = cast("GuardedServicer", servicer)
            started = time.perf_counter()
            try:
                identity = await _enter(door, method, context)
                answer = await handler(servicer, request, context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await abort(context, _refused(door, method, request, context, exc, started=started))
            else:
                _audit_allowed(door, method, identity, request)
                return answer
            finally:
                structlog.contextvars.unbind_contextvars("rpc", "peer", "user")

        run.vgpu_guarded = method  # type: ignore[attr-defined]  # marks the handler for tests/unit/test_auth_rules.py
        return run


async def _guarded_items(
    door: GuardedServicer, method: str, request: object, context: Ctx, items: AsyncIterator[Resp]
) -> AsyncIterator[Resp]:
    """A streaming handler's answers behind the gate: admit first (the handler's body runs only when iterated)."""
    started = time.perf_counter()
    try:
        identity = await _enter(door, method, context)
        async for item in items:
            yield item
        _audit_allowed(door, method, identity, request)
    except Exception as exc:
        if _is_abort(exc):
            raise
        await abort(context, _refused(door, method, request, context, exc, started=started))
    finally:
        structlog.contextvars.unbind_contextvars("rpc", "peer", "user")


class guarded_stream:  # noqa: N801 -- used as a decorator, named like one
    """Decorate a server-streaming handler the same way."""

    def __init__(self, method: str) -> None:
        self._method = method

    def __call__(
        self, handler: Callable[[S, Req, Ctx], AsyncIterator[Resp]]
    ) -> Callable[[S, Req, Ctx], AsyncIterator[Resp]]:
        """Wrap `handler`."""
        method = self._method

        @functools.wraps(handler)
        async def run(servicer: S, request: Req, context: Ctx) -> AsyncIterator[Resp]:
            door = cast("GuardedServicer", servicer)
            async for item in _guarded_items(door, method, request, context, handler(servicer, request, context)):
                yield item

        run.vgpu_guarded = method  # type: ignore[attr-defined]  # marks the handler for tests/unit/test_auth_rules.py
        return run


class guarded_bidi:  # noqa: N801 -- used as a decorator, named like one
    """Decorate a bidirectional-streaming handler the same way (the audit target is the call, not a message)."""

    def __init__(self, method: str) -> None:
        self._method = method

    def __call__(
        self, handler: Callable[[S, AsyncIterator[Req], Ctx], AsyncIterator[Resp]]
    ) -> Callable[[S, AsyncIterator[Req], Ctx], AsyncIterator[Resp]]:
        """Wrap `handler`."""
        method = self._method

        @functools.wraps(handler)
        async def run(servicer: S, requests: AsyncIterator[Req], context: Ctx) -> AsyncIterator[Resp]:
            door = cast("GuardedServicer", servicer)
            async for item in _guarded_items(door, method, None, context, handler(servicer, requests, context)):
                yield item

        run.vgpu_guarded = method  # type: ignore[attr-defined]  # marks the handler for tests/unit/test_auth_rules.py
        return run


def _is_abort(exc: Exception) -> bool:
    """grpc.aio signals context.abort with AbortError; let it through untouched."""
    return isinstance(exc, grpc.aio.AbortError)

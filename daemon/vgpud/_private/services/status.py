"""The gRPC edge of errors: Refusal -> status code + google.rpc.ErrorInfo, and a guard for handlers.

The guard is what keeps "nothing a client sends may crash the daemon": any exception a handler leaks is
logged and answered as INTERNAL; store outages become UNAVAILABLE.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vgpu._private import reasons
from vgpud._private.refusal import Refusal
from vgpud._private.store.base import StoreError

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
}


def _report(servicer: object, method: str, refusal: Refusal) -> None:
    """Tell the servicer's `report_error(method, code_name)` hook (metrics), if it has one."""
    hook = getattr(servicer, "report_error", None)
    if callable(hook):
        hook(method, CODES.get(refusal.reason, grpc.StatusCode.UNKNOWN).name)


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


class guarded_unary:  # noqa: N801 -- used as a decorator, named like one
    """Decorate a unary handler: bind log context, turn exceptions into statuses."""

    def __init__(self, method: str) -> None:
        self._method = method

    def __call__(self, handler: Callable[[S, Req, Ctx], Awaitable[Resp]]) -> Callable[[S, Req, Ctx], Awaitable[Resp]]:
        """Wrap `handler`."""
        method = self._method

        @functools.wraps(handler)
        async def run(servicer: S, request: Req, context: Ctx) -> Resp:
            structlog.contextvars.bind_contextvars(rpc=method, peer=context.peer())
            started = time.perf_counter()
            try:
                return await handler(servicer, request, context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                refusal = _as_refusal(exc, method)
                _report(servicer, method, refusal)
                log.info("rpc refused", reason=refusal.reason, ms=round((time.perf_counter() - started) * 1e3, 2))
                await abort(context, refusal)
            finally:
                structlog.contextvars.unbind_contextvars("rpc", "peer")

        return run


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
            structlog.contextvars.bind_contextvars(rpc=method, peer=context.peer())
            try:
                async for item in handler(servicer, request, context):
                    yield item
            except Exception as exc:
                if _is_abort(exc):
                    raise
                refusal = _as_refusal(exc, method)
                _report(servicer, method, refusal)
                await abort(context, refusal)
            finally:
                structlog.contextvars.unbind_contextvars("rpc", "peer")

        return run


def _is_abort(exc: Exception) -> bool:
    """grpc.aio signals context.abort with AbortError; let it through untouched."""
    return isinstance(exc, grpc.aio.AbortError)

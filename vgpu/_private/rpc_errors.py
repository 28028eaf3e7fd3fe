"""The transport boundary for errors: a failed gRPC call becomes the matching `VgpuError`.

Mapping goes by the google.rpc.ErrorInfo reason the daemon attaches first (it is exact), then by the
status code (for failures that never reached a vgpud handler, e.g. a missing socket).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]  # no stubs ship for googleapis-common-protos
from grpc_status import rpc_status

from vgpu._private import errors, reasons
from vgpu._private.errors import VgpuError
from vgpu._private.tls import TlsConfig

_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
_DOOR_REFUSED: Final = "got frame type 7"
"""How gRPC reports a connection whose first frame is a GOAWAY: what vgpud's door sends to a caller over a cap."""

_BY_REASON: Final[dict[str, type[VgpuError]]] = {
    reasons.INVALID_REQUEST: errors.InvalidRequestError,
    reasons.UNKNOWN_GPU_MODEL: errors.InvalidRequestError,
    reasons.UNKNOWN_MIG_PROFILE: errors.InvalidRequestError,
    reasons.GPU_NOT_FOUND: errors.InvalidRequestError,
    reasons.NODE_NOT_FOUND: errors.InvalidRequestError,
    reasons.UNKNOWN_PROJECT: errors.InvalidRequestError,
    reasons.UNKNOWN_PRIORITY: errors.InvalidRequestError,
    reasons.PROJECT_NOT_FOUND: errors.InvalidRequestError,
    reasons.OVER_QUOTA: errors.QuotaExceededError,
    reasons.NOT_PREEMPTIBLE: errors.NotPreemptibleError,
    reasons.NOT_PREEMPTING: errors.LeaseStateError,
    reasons.PROJECT_BUSY: errors.ConflictError,
    reasons.NO_CAPACITY: errors.NoCapacityError,
    reasons.QUEUE_FULL: errors.QueueFullError,
    reasons.TOO_MANY_WAITING: errors.QueueFullError,
    reasons.TOO_MANY_CONNECTIONS: errors.DaemonUnavailableError,
    reasons.NEVER_FITS: errors.NeverFitsError,
    reasons.QUEUE_TIMEOUT: errors.QueueTimeoutError,
    reasons.LEASE_NOT_FOUND: errors.LeaseNotFoundError,
    reasons.LEASE_TOKEN_MISMATCH: errors.LeasePermissionError,
    reasons.LEASE_ENDED: errors.LeaseEndedError,
    reasons.GPU_BUSY: errors.GpuBusyError,
    reasons.NODE_DRAINING: errors.NodeDrainingError,
    reasons.NODE_DOWN: errors.NodeDrainingError,
    reasons.NO_LEADER: errors.DaemonUnavailableError,
    reasons.NOT_IMPLEMENTED: errors.NotSupportedError,
    reasons.CONFLICT: errors.ConflictError,
    reasons.STORE_UNAVAILABLE: errors.DaemonUnavailableError,
    reasons.SHUTTING_DOWN: errors.DaemonUnavailableError,
    reasons.INTERNAL: errors.InternalError,
    reasons.OVER_MEMORY_BUDGET: errors.MemoryBudgetError,
    reasons.JOB_REFUSED: errors.PermissionDeniedError,
    reasons.TOO_MANY_JOBS: errors.NoCapacityError,
    reasons.JOB_NODE_LOST: errors.DaemonUnavailableError,
    **dict.fromkeys(reasons.AUTHENTICATION_REASONS, errors.AuthenticationError),
    reasons.ROLE_NOT_ALLOWED: errors.PermissionDeniedError,
    reasons.NOT_PROJECT_MEMBER: errors.PermissionDeniedError,
    reasons.PRIORITY_NOT_ALLOWED: errors.PermissionDeniedError,
    reasons.NOT_LEASE_OWNER: errors.LeasePermissionError,
}

_BY_CODE: Final[dict[grpc.StatusCode, tuple[type[VgpuError], str]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (errors.InvalidRequestError, reasons.INVALID_REQUEST),
    grpc.StatusCode.OUT_OF_RANGE: (errors.InvalidRequestError, reasons.INVALID_REQUEST),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (errors.NoCapacityError, reasons.NO_CAPACITY),
    grpc.StatusCode.NOT_FOUND: (errors.LeaseNotFoundError, reasons.LEASE_NOT_FOUND),
    grpc.StatusCode.PERMISSION_DENIED: (errors.PermissionDeniedError, reasons.ROLE_NOT_ALLOWED),
    grpc.StatusCode.UNAUTHENTICATED: (errors.AuthenticationError, reasons.CREDENTIAL_INVALID),
    grpc.StatusCode.UNIMPLEMENTED: (errors.NotSupportedError, reasons.NOT_IMPLEMENTED),
    grpc.StatusCode.ABORTED: (errors.ConflictError, reasons.CONFLICT),
    grpc.StatusCode.INTERNAL: (errors.InternalError, reasons.INTERNAL),
    grpc.StatusCode.UNKNOWN: (errors.InternalError, reasons.INTERNAL),
    grpc.StatusCode.DATA_LOSS: (errors.InternalError, reasons.INTERNAL),
    grpc.StatusCode.FAILED_PRECONDITION: (VgpuError, "FAILED_PRECONDITION"),
}


@dataclass(frozen=True, slots=True)
class RpcFailure:
    """What a failed call said: its status code, message and ErrorInfo reason (if any)."""

    code: grpc.StatusCode | None
    message: str
    reason: str | None


def _reason_from_status(status: object) -> str | None:
    """The vgpu.dev ErrorInfo reason among a google.rpc.Status's details."""
    for detail in getattr(status, "details", ()):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain in (reasons.DOMAIN, "") and info.reason:
                return str(info.reason)
    return None


def failure_of_sync_call(error: grpc.RpcError) -> RpcFailure:
    """Read a sync-stack RpcError (which is also a grpc.Call) through grpc_status."""
    if not callable(getattr(error, "code", None)):
        return RpcFailure(None, str(error), None)
    call = cast("grpc.Call", error)  # errors of the sync stack are grpc.Call objects at run time
    reason: str | None = None
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # details present but inconsistent with the call's code/message: ignore them
        status = None
    if status is not None:
        reason = _reason_from_status(status)
    return RpcFailure(call.code(), call.details() or "", reason)


def failure_of_aio_call(error: grpc.aio.AioRpcError) -> RpcFailure:
    """Read a grpc.aio error: the Status travels in the grpc-status-details-bin trailer."""
    reason: str | None = None
    for key, value in error.trailing_metadata() or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except DecodeError:  # a garbled trailer must not hide the real error: map by code alone
                return RpcFailure(error.code(), error.details() or "", None)
            reason = _reason_from_status(status)
    return RpcFailure(error.code(), error.details() or "", reason)


def unreachable_message(endpoint: str) -> str:
    """The one message for 'no daemon there', naming the knobs that change where we look."""
    return f"cannot reach vgpud at {endpoint}: is it running? set VGPU_ENDPOINT or pass endpoint="


def credential_error(error: Exception, endpoint: str) -> VgpuError:
    """The error for a credential socket that does not answer: the daemon is most likely not running."""
    return errors.DaemonUnavailableError(
        f"{unreachable_message(endpoint)} ({error})", reason=errors.DAEMON_UNREACHABLE, code=None
    )


def _unavailable(failure: RpcFailure, endpoint: str, tls: TlsConfig | None) -> VgpuError:
    """No answer: gRPC's overload refusal, a connection cap, a TLS handshake vgpud refused, or no daemon there."""
    code_name = failure.code.name if failure.code is not None else None
    if failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # gRPC's own overload refusal (vgpud's carry a reason)
        return errors.DaemonUnavailableError(
            f"vgpud at {endpoint} is overloaded and turned the call away ({failure.message}); retry shortly",
            reason=errors.DAEMON_OVERLOADED,
            code=code_name,
        )
    diagnosis = tls.diagnose(failure.message) if tls is not None else None
    if diagnosis is not None:
        reason, meaning = diagnosis
        return errors.AuthenticationError(
            f"cannot talk to vgpud at {endpoint}: {meaning}", reason=reason, code=code_name
        )
    if _DOOR_REFUSED in failure.message:  # vgpud's door answered a new connection with GOAWAY: a cap, not a crash
        return errors.DaemonUnavailableError(
            f"vgpud at {endpoint} refused a new connection: this user holds too many connections to it "
            "([limits] max_connections_per_uid, or max_connections in all); close idle Pools or share one",
            reason=reasons.TOO_MANY_CONNECTIONS,
            code=code_name,
        )
    return errors.DaemonUnavailableError(
        f"{unreachable_message(endpoint)} ({failure.message[:200]})",
        reason=failure.reason or errors.DAEMON_UNREACHABLE,
        code=code_name,
    )


def error_for(failure: RpcFailure, *, endpoint: str, timeout: float | None, tls: TlsConfig | None = None) -> VgpuError:
    """The VgpuError for a failed call: by ErrorInfo reason first, then by status code."""
    code_name = failure.code.name if failure.code is not None else None
    if failure.reason is not None:
        cls = _BY_REASON.get(failure.reason)
        if cls is not None:
            return cls(failure.message or failure.reason, reason=failure.reason, code=code_name)
    code = failure.code
    if code == grpc.StatusCode.UNAVAILABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and failure.reason is None):
        return _unavailable(failure, endpoint, tls)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        waited = f" within {timeout:g}s" if timeout is not None else " before the call's deadline"
        return errors.DaemonUnavailableError(
            f"vgpud at {endpoint} did not answer{waited}",
            reason=failure.reason or errors.DAEMON_TIMEOUT,
            code=code_name,
        )
    if code == grpc.StatusCode.CANCELLED:
        return VgpuError(
            f"the call to vgpud at {endpoint} was cancelled",
            reason=failure.reason or errors.CANCELLED,
            code=code_name,
        )
    if code is not None and code in _BY_CODE:
        cls, fallback = _BY_CODE[code]
        return cls(failure.message or code.name, reason=failure.reason or fallback, code=code_name)
    return errors.InternalError(
        f"unexpected failure talking to vgpud at {endpoint}: {failure.message or code_name}",
        reason=failure.reason or reasons.INTERNAL,
        code=code_name,
    )

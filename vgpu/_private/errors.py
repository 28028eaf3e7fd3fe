"""The SDK's one exception hierarchy: everything raised to users derives from `VgpuError`.

Each class stands for something a caller can act on (wait, fix the request, restart the daemon), so
`except vgpu.NoCapacityError` reads as the decision it is; `.reason` keeps the daemon's exact constant.
"""

from __future__ import annotations

from typing import ClassVar, Final

from vgpu._private import reasons

# Reasons the SDK itself assigns when no daemon answer carried one.
DAEMON_UNREACHABLE: Final = "DAEMON_UNREACHABLE"
"""No connection to vgpud could be made or kept."""
DAEMON_TIMEOUT: Final = "DAEMON_TIMEOUT"
"""vgpud did not answer before the call's deadline."""
LEASE_LOST: Final = "LEASE_LOST"
"""The SDK stopped being able to keep the lease alive (it ended, or the daemon was gone past the TTL)."""
DAEMON_OVERLOADED: Final = "DAEMON_OVERLOADED"
"""gRPC itself turned the call away before vgpud saw it (too many calls pending): safe to retry after a pause."""
CLIENT_CLOSED: Final = "CLIENT_CLOSED"
"""The Pool (or the lease's own client) was closed before or during the call."""
CANCELLED: Final = "CANCELLED"
"""The call was cancelled before it finished."""
LEASE_SUSPENDED: Final = "LEASE_SUSPENDED"
"""The lease is preempted and acknowledged: it holds no GPUs until it is resumed (LeaseStateError)."""


class VgpuError(Exception):
    """Base of every error the SDK raises: `.reason` (constant), `.code` (gRPC status name or None)."""

    default_reason: ClassVar[str] = reasons.INTERNAL

    def __init__(self, message: str, *, reason: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.code = code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r}, code={self.code!r})"


class InvalidRequestError(VgpuError, ValueError):
    """The request is malformed (units, fields, unknown GPU model): fix it, retrying will not help."""

    default_reason = reasons.INVALID_REQUEST


class NoCapacityError(VgpuError):
    """Nothing fits right now (fail-fast acquire); the message says what would fit."""

    default_reason = reasons.NO_CAPACITY


class QueueFullError(NoCapacityError):
    """The queue is full, pool-wide or for this user (`reason` says which): retry later or cancel a waiting request."""

    default_reason = reasons.QUEUE_FULL


class NeverFitsError(VgpuError):
    """No GPU of the pool could hold the request even when empty: waiting will not help."""

    default_reason = reasons.NEVER_FITS


class QueueTimeoutError(VgpuError, TimeoutError):
    """The request waited until its timeout without being granted."""

    default_reason = reasons.QUEUE_TIMEOUT


class LeaseNotFoundError(VgpuError):
    """The daemon knows no lease with this id (never existed, or its history was dropped)."""

    default_reason = reasons.LEASE_NOT_FOUND


class AuthenticationError(VgpuError):
    """The daemon could not verify who is calling (no or a bad credential or certificate); the message says which."""

    default_reason = reasons.CREDENTIAL_MISSING


class PermissionDeniedError(VgpuError, PermissionError):
    """The caller is known but not allowed: not a member of the project, not an admin, not the lease's owner."""

    default_reason = reasons.ROLE_NOT_ALLOWED


class LeasePermissionError(PermissionDeniedError):
    """The token does not belong to this lease, or the lease belongs to another identity."""

    default_reason = reasons.LEASE_TOKEN_MISMATCH


class LeaseEndedError(VgpuError):
    """The lease was released, revoked or expired; it cannot be used any more."""

    default_reason = reasons.LEASE_ENDED


class LeaseLostError(VgpuError):
    """The SDK marked this lease lost (ended under us, or the daemon was unreachable past its TTL)."""

    default_reason = LEASE_LOST


class NodeDrainingError(VgpuError):
    """The node takes no new work; ask another node or wait until it is undrained."""

    default_reason = reasons.NODE_DRAINING


class GpuBusyError(VgpuError):
    """The GPU has leases on it, so the operation (e.g. a mode change) must wait."""

    default_reason = reasons.GPU_BUSY


class NotSupportedError(VgpuError):
    """The request needs a capability this daemon does not have yet."""

    default_reason = reasons.NOT_IMPLEMENTED


class DaemonUnavailableError(VgpuError):
    """vgpud cannot be reached, is shutting down or cannot reach etcd: retry later or check the daemon."""

    default_reason = DAEMON_UNREACHABLE


class ConflictError(VgpuError):
    """Concurrent writers kept winning the race for the same capacity; retrying may succeed."""

    default_reason = reasons.CONFLICT


class QuotaExceededError(VgpuError):
    """The request is above what its project may hold (its limit, or deserved quota for its class)."""

    default_reason = reasons.OVER_QUOTA


class NotPreemptibleError(VgpuError):
    """The lease's priority class may not be preempted."""

    default_reason = reasons.NOT_PREEMPTIBLE


class LeaseStateError(VgpuError):
    """The lease is not in the state the call needs (e.g. acknowledging a preemption nobody asked for)."""

    default_reason = reasons.NOT_PREEMPTING


class MemoryBudgetError(VgpuError, MemoryError):
    """An allocation would take the lease past its memory budget; the message names the budget and the use.

    A MemoryError too, so code that already handles CuPy's or PyTorch's out-of-memory keeps working.
    """

    default_reason = reasons.OVER_MEMORY_BUDGET


class InternalError(VgpuError):
    """A bug in vgpud or the SDK; the message says what failed."""

    default_reason = reasons.INTERNAL


ERROR_CLASSES: Final[tuple[type[VgpuError], ...]] = (
    VgpuError,
    QueueFullError,
    InvalidRequestError,
    QuotaExceededError,
    NotPreemptibleError,
    LeaseStateError,
    NoCapacityError,
    NeverFitsError,
    QueueTimeoutError,
    LeaseNotFoundError,
    AuthenticationError,
    PermissionDeniedError,
    LeasePermissionError,
    LeaseEndedError,
    LeaseLostError,
    NodeDrainingError,
    GpuBusyError,
    NotSupportedError,
    DaemonUnavailableError,
    ConflictError,
    MemoryBudgetError,
    InternalError,
)

"""When one acquire call tries its request again: the retry rules shared by the sync and asyncio pools.

A retry resends the same request_id, which the daemon answers idempotently (same lease, same token).
A daemon that was never reached fails fast: only a call that has seen the daemon (a queue update, or an
answer carrying the daemon's own reason) keeps retrying a broken connection until its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from vgpu._private import errors, reasons
from vgpu._private.errors import DaemonUnavailableError, QueueTimeoutError, VgpuError
from vgpu._private.lease_records import QueueInfo

_FIRST_BACKOFF: Final = 0.1
_MAX_BACKOFF: Final = 2.0
_RETRYABLE_REASONS: Final = frozenset(
    {reasons.SHUTTING_DOWN, reasons.STORE_UNAVAILABLE, reasons.CONFLICT, reasons.NO_LEADER, errors.DAEMON_OVERLOADED}
)


class AcquireAttempts:
    """Bookkeeping for one acquire call across its attempts: deadline, evidence, backoff, last position."""

    def __init__(
        self, *, timeout: float, wait: bool, endpoint: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout = timeout
        self.wait = wait
        self.endpoint = endpoint
        self._clock = clock
        self._deadline = clock() + timeout
        self._saw_daemon = False
        self._backoff = _FIRST_BACKOFF
        self.attempts = 0
        self.last_queue: QueueInfo | None = None

    def remaining(self) -> float:
        """Seconds left before the call's deadline."""
        return self._deadline - self._clock()

    @property
    def wait_for_ready(self) -> bool:
        """After the daemon was seen, a retry waits for the connection to come back instead of failing."""
        return self._saw_daemon

    def start_attempt(self) -> float:
        """Count an attempt and return its deadline (seconds); raise the timeout error if none is left."""
        left = self.remaining()
        if left <= 0:
            raise self.timeout_error()
        self.attempts += 1
        return left

    def saw_daemon(self) -> None:
        """The daemon answered something on this call, so a later broken connection is worth retrying."""
        self._saw_daemon = True
        self._backoff = _FIRST_BACKOFF

    def queued(self, info: QueueInfo) -> QueueInfo:
        """Record a queue update (for the timeout message) and return it."""
        self.last_queue = info
        return info

    def timeout_error(self) -> VgpuError:
        """The error for reaching the deadline: a queue timeout when waiting, else an unanswered call."""
        if self.wait:
            where = ""
            q = self.last_queue
            if q is not None:
                where = f" (last at queue position {q.position} of {q.queue_length}"
                where += f": {q.reason})" if q.reason else ")"
            return QueueTimeoutError(
                f"no slice was granted within {self.timeout:g}s{where}; pass a longer timeout= or ask for less",
                reason=reasons.QUEUE_TIMEOUT,
                code="DEADLINE_EXCEEDED",
            )
        return DaemonUnavailableError(
            f"vgpud at {self.endpoint} did not answer the acquire within {self.timeout:g}s",
            reason=errors.DAEMON_TIMEOUT,
            code="DEADLINE_EXCEEDED",
        )

    def classify(self, error: VgpuError) -> VgpuError:
        """Replace the generic 'deadline passed' error with the acquire's own timeout error."""
        if error.reason == errors.DAEMON_TIMEOUT:
            return self.timeout_error()
        return error

    def retry_delay(self, error: VgpuError) -> float | None:
        """Seconds to wait before resending the same request, or None to give up with `error`."""
        if error.reason == errors.DAEMON_TIMEOUT:
            return None
        if error.reason in _RETRYABLE_REASONS:
            self._saw_daemon = True  # the daemon itself answered and asked us to retry
        elif not (isinstance(error, DaemonUnavailableError) and self._saw_daemon):
            return None
        delay = self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        if self.remaining() <= delay:
            return None
        return delay

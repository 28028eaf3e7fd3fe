"""When a lease's heartbeats have failed for good: the rules shared by the thread and the asyncio task.

An answer that says the lease ended (or an error that says it is gone) loses it at once; a daemon that
does not answer is retried until a whole TTL has passed since the last answer, because by then the daemon
has expired the lease anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from vgpu._private.errors import LeaseEndedError, LeaseNotFoundError, LeasePermissionError, VgpuError

MIN_INTERVAL: Final = 0.5
"""Never heartbeat more often than this, whatever the TTL."""
DEFAULT_TTL: Final = 30.0
"""Assumed when the daemon did not say the lease's TTL."""
_FIRST_RETRY: Final = 0.2

UNREACHABLE_REASON: Final = "daemon unreachable for longer than the lease TTL"


@dataclass(frozen=True, slots=True)
class Verdict:
    """After a failed heartbeat: give the lease up (`lost_reason`) or try again in `retry_in` seconds."""

    lost_reason: str | None
    retry_in: float


class HeartbeatPolicy:
    """Interval, per-call deadline and give-up rule for one lease's heartbeats."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.ttl_s = ttl_s if ttl_s > 0 else DEFAULT_TTL
        self.last_ok = clock()
        self._retry = _FIRST_RETRY

    @property
    def interval(self) -> float:
        """Seconds between heartbeats: a third of the TTL, so two may be lost before the lease expires."""
        return max(MIN_INTERVAL, self.ttl_s / 3)

    def call_timeout(self, client_timeout: float) -> float:
        """Deadline for one heartbeat call: never longer than the interval."""
        return max(MIN_INTERVAL, min(client_timeout, self.interval))

    def answered(self, ttl_s: float = 0) -> None:
        """A heartbeat succeeded; `ttl_s` is the TTL the daemon reported (0: unchanged)."""
        self.last_ok = self._clock()
        self._retry = _FIRST_RETRY
        if ttl_s > 0:
            self.ttl_s = ttl_s

    def failed(self, error: VgpuError) -> Verdict:
        """What to do after a heartbeat raised `error`."""
        if isinstance(error, LeaseEndedError | LeaseNotFoundError | LeasePermissionError):
            return Verdict(error.message, 0.0)
        silent_for = self._clock() - self.last_ok
        if silent_for >= self.ttl_s:
            return Verdict(f"{UNREACHABLE_REASON} ({self.ttl_s:g}s): {error.message}", 0.0)
        delay = min(self._retry, self.interval, max(0.05, self.ttl_s - silent_for))
        self._retry = min(self._retry * 2, self.interval)
        return Verdict(None, delay)

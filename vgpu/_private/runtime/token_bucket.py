"""A token bucket of GPU-seconds: refilled at a lease's share of wall time, drained by measured GPU time.

It has no clock of its own (every method takes `now`, in seconds of one monotonic clock), so its algebra is
tested exactly and the throttle decides where time comes from. A charge may drive the level below zero: GPU
time is only known after the work ran, so the debt is paid back by waiting `delay(now)` before the next work.
`start_work(now)` says work is running whose charge comes later: that work drains the bucket while it earns,
so the refill meanwhile is not lost to the cap (without it a step longer than capacity / rate would be
charged for GPU time it had earned, and a busy lease would get less than its share).
"""

from __future__ import annotations

import math

from vgpu._private.errors import InvalidRequestError


def check_rate(rate: float) -> float:
    """`rate` as a float when it is a valid share (0 < rate <= 1); InvalidRequestError otherwise."""
    if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise InvalidRequestError(
            f"compute share must be in (0, 1] GPU-seconds per wall second, got {rate!r}; "
            "pass e.g. 0.25 for a quarter of the GPU"
        )
    return float(rate)


def _check_seconds(name: str, value: float, *, positive: bool) -> float:
    if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0):
        bound = "> 0" if positive else ">= 0"
        raise InvalidRequestError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


class TokenBucket:
    """GPU-seconds earned at `rate` per wall second, banked up to `capacity`, spent by `charge`.

    Invariant: while `delay(now) == 0`, the GPU time charged since creation is at most
    `capacity + (integral of the rate over the elapsed wall time)`; a caller that waits out `delay()`
    before each piece of work therefore never runs above its share over windows much longer than
    `capacity / rate`, except for the one charge it is paying back.
    """

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self._rate = check_rate(rate)
        self._capacity = _check_seconds("bucket capacity", capacity, positive=True)
        if not math.isfinite(now):
            raise InvalidRequestError(f"clock reading must be finite, got {now!r}")
        self._last = float(now)
        self._level = self._capacity
        self._working = False

    @property
    def rate(self) -> float:
        """GPU-seconds earned per wall second (the share in force)."""
        return self._rate

    @property
    def capacity(self) -> float:
        """The most GPU-seconds the bucket banks: the burst a lease may run above its share."""
        return self._capacity

    def _refill(self, now: float) -> None:
        if not math.isfinite(now):
            raise InvalidRequestError(f"clock reading must be finite, got {now!r}")
        if now < self._last:
            raise InvalidRequestError(
                f"clock went backwards ({now!r} < {self._last!r}): pass readings of one monotonic clock"
            )
        earned = self._level + self._rate * (now - self._last)
        self._level = earned if self._working else min(self._capacity, earned)
        self._last = now

    def level(self, now: float) -> float:
        """GPU-seconds banked at `now`: negative is debt still to wait off; above capacity while work is uncharged."""
        self._refill(now)
        return self._level

    def start_work(self, now: float) -> None:
        """Work starts at `now` whose GPU time the next `charge` reports: refill uncapped until then."""
        self._refill(now)
        self._working = True

    def charge(self, gpu_seconds: float, now: float) -> None:
        """Spend `gpu_seconds` of GPU time measured up to `now`; the level may go negative (debt).

        After `start_work`, the refill since then is counted against this charge before the cap applies.
        """
        spent = _check_seconds("charged GPU time", gpu_seconds, positive=False)
        self._refill(now)
        self._level = min(self._capacity, self._level - spent)
        self._working = False

    def delay(self, now: float) -> float:
        """Seconds from `now` until the level is back to zero: how long to wait before more work."""
        self._refill(now)
        return 0.0 if self._level >= 0.0 else -self._level / self._rate

    def set_rate(self, rate: float, now: float) -> None:
        """Change the share live: what accrued up to `now` is settled at the old rate, the new one applies after."""
        new_rate = check_rate(rate)
        self._refill(now)
        self._rate = new_rate

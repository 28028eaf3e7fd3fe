"""A lease's compute share, enforced inside the workload: GPU time is measured and the host waits off the excess.

The lease calls `step()` at every checkpoint (and wraps helper launches in `measure()`): the GPU time since the
last one, measured by the backend's DeviceTimer (CUDA events on a GPU, wall time on NumPy), is charged to a
TokenBucket refilled at the share; while the bucket is in debt the host thread waits, so it queues no more work.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from vgpu._private.errors import InvalidRequestError
from vgpu._private.runtime.array_backend import ArrayBackend, DeviceTimer
from vgpu._private.runtime.token_bucket import TokenBucket, check_rate

DEFAULT_CAPACITY_S: Final = 0.25
"""Burst size in GPU-seconds. Small enough that a HARD lease stays within 2.5 points of its share over any
10 s window (plus the one step it is paying back), big enough that typical 10-100 ms steps of a lease that is
under its share on average draw on the bank instead of each one stalling."""

DEFAULT_USAGE_WINDOW_S: Final = 10.0
"""How far back `utilization()` looks: long enough to smooth steps, short enough to follow a resize."""

_MIN_WAIT_S: Final = 1e-6
"""Debts below this are not waited for: shorter than the timers' resolution, and it ends float round-off."""

Wait = Callable[[threading.Event, float], object]
"""Blocks until the event is set or the timeout (seconds) passes; tests inject one that advances a fake clock."""


def _wait_on_event(event: threading.Event, timeout: float) -> bool:
    return event.wait(timeout)


class ThrottlePolicy(enum.Enum):
    """What the throttle does when the lease is past its share."""

    HARD = "hard"
    """Never above the share over any window much longer than the bucket: the host waits off every debt."""
    BURST = "burst"
    """As HARD, but while the GPU is otherwise idle (`set_gpu_idle(True)`) the bucket refills at 1.0."""
    OFF = "off"
    """Measure only: usage is reported, the host never waits."""


@dataclass(frozen=True)
class ThrottleStats:
    """A usage report: what the lease used of the GPU and how long the throttle held it back."""

    share: float
    policy: ThrottlePolicy
    gpu_seconds: float
    """GPU time charged since the throttle was made."""
    wall_seconds: float
    """Wall time since the throttle was made."""
    throttled_seconds: float
    """Wall time the host thread spent waiting for the bucket."""
    utilization: float
    """GPU seconds per wall second over the recent window, 0..1."""
    bursting: bool = False
    """Whether the "burst" policy runs at the whole GPU now (the daemon said the GPU is otherwise idle)."""


class _UsageWindow:
    """GPU time per wall-clock segment over the last `window_s`, spread evenly over each segment."""

    def __init__(self, window_s: float, since: float) -> None:
        self._window = window_s
        self._since = since
        self._segments: deque[tuple[float, float, float]] = deque()

    def add(self, start: float, end: float, gpu_seconds: float) -> None:
        self._segments.append((start, end, gpu_seconds))
        while self._segments and self._segments[0][1] < end - self._window:
            self._segments.popleft()

    def utilization(self, now: float) -> float:
        window_start = max(now - self._window, self._since)
        span = now - window_start
        if span <= 0.0:
            return 0.0
        used = 0.0
        for start, end, gpu in self._segments:
            overlap = min(end, now) - max(start, window_start)
            if end > start and overlap > 0.0:
                used += gpu * overlap / (end - start)
            elif end <= start and window_start <= start <= now:
                used += gpu
        return min(1.0, used / span)


class ComputeThrottle:
    """Holds a lease's GPU use to its share by making the host thread wait at checkpoints.

    `step()`, `measure()` and `pause()` are called from the workload thread; `interrupt()`, `set_share()`,
    `set_gpu_idle()`, `stats()` and `utilization()` from any thread.
    """

    def __init__(
        self,
        backend: ArrayBackend,
        share: float,
        policy: ThrottlePolicy | str = ThrottlePolicy.HARD,
        *,
        capacity_s: float = DEFAULT_CAPACITY_S,
        usage_window_s: float = DEFAULT_USAGE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        wait: Wait = _wait_on_event,
    ) -> None:
        try:
            self._policy = ThrottlePolicy(policy.lower() if isinstance(policy, str) else policy)
        except ValueError:
            raise InvalidRequestError(f"throttle policy must be hard, burst or off, got {policy!r}") from None
        if not usage_window_s > 0.0:
            raise InvalidRequestError(f"usage window must be > 0 seconds, got {usage_window_s!r}")
        self._backend = backend
        self._share = check_rate(share)
        self._clock = clock
        self._wait = wait
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._interrupted = False
        self._gpu_idle = False
        now = clock()
        self._created = now
        self._bucket = TokenBucket(self._share, capacity_s, now)
        self._usage = _UsageWindow(usage_window_s, now)
        self._gpu_seconds = 0.0
        self._throttled_seconds = 0.0
        self._timer: DeviceTimer | None = None
        self._segment_start = now

    @property
    def policy(self) -> ThrottlePolicy:
        """The policy fixed at construction."""
        return self._policy

    @property
    def share(self) -> float:
        """The lease's share of the GPU (what HARD holds it to)."""
        with self._lock:
            return self._share

    def step(self) -> None:
        """At a checkpoint: charge the GPU time since the last one, wait off any debt, start measuring again."""
        self._settle()
        self._wait_for_tokens()
        self._start_segment()

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Charge the GPU time of the work inside (a helper launch) and wait off the debt it leaves.

        A running step segment is settled first and resumed after, so no GPU time is counted twice (measures do
        not nest). If the work raises, its time is still charged and the error propagates without a wait.
        """
        resume_segment = self._settle()
        self._wait_for_tokens()
        start = self._begin_work()
        timer = self._backend.start_timer()
        try:
            yield
        finally:
            self._charge(timer.stop(), start)
        self._wait_for_tokens()
        if resume_segment:
            self._start_segment()

    def pause(self) -> None:
        """Stop measuring (at a preemption or release): charge the running segment and start none.

        The next `step()` starts measuring again, so a suspended lease is not charged for its time off.
        """
        self._settle()

    def interrupt(self) -> None:
        """Wake the step waiting for the bucket now, or make the next step skip its wait (once).

        A preemption or release must not wait for the bucket: the lease calls this when one arrives.
        """
        with self._lock:
            self._interrupted = True
            self._wake.set()

    def set_share(self, share: float) -> None:
        """Change the share live (an elastic resize): the new rate applies from now, a waiting step re-plans."""
        new_share = check_rate(share)
        with self._lock:
            self._share = new_share
            self._apply_rate()

    def set_gpu_idle(self, idle: bool) -> None:
        """Tell the throttle whether the GPU is otherwise idle (the daemon's view); BURST then refills at 1.0."""
        with self._lock:
            self._gpu_idle = idle
            self._apply_rate()

    def utilization(self) -> float:
        """GPU seconds per wall second over the recent usage window, 0..1."""
        with self._lock:
            return self._usage.utilization(self._clock())

    def stats(self) -> ThrottleStats:
        """Totals since the throttle was made, for the lease's usage report."""
        with self._lock:
            now = self._clock()
            return ThrottleStats(
                share=self._share,
                policy=self._policy,
                gpu_seconds=self._gpu_seconds,
                wall_seconds=now - self._created,
                throttled_seconds=self._throttled_seconds,
                utilization=self._usage.utilization(now),
                bursting=self._policy is ThrottlePolicy.BURST and self._gpu_idle,
            )

    def _apply_rate(self) -> None:
        """Put the rate in force into the bucket and wake a waiting step to re-plan; called under the lock."""
        bursting = self._policy is ThrottlePolicy.BURST and self._gpu_idle
        self._bucket.set_rate(1.0 if bursting else self._share, self._clock())
        self._wake.set()

    def _settle(self) -> bool:
        """Stop the running segment's timer and charge it; whether one was running."""
        with self._lock:
            timer, self._timer = self._timer, None
            start = self._segment_start
        if timer is None:
            return False
        self._charge(timer.stop(), start)
        return True

    def _charge(self, gpu_seconds: float, start: float) -> None:
        with self._lock:
            now = self._clock()
            self._gpu_seconds += gpu_seconds
            self._usage.add(start, now, gpu_seconds)
            if self._policy is not ThrottlePolicy.OFF:
                self._bucket.charge(gpu_seconds, now)

    def _wait_for_tokens(self) -> None:
        """Block until the bucket is out of debt or an interrupt arrives; the rate may change meanwhile."""
        waiting_since: float | None = None
        while True:
            with self._lock:
                if self._interrupted:
                    self._interrupted = False
                    break
                now = self._clock()
                delay = self._bucket.delay(now)
                if delay <= _MIN_WAIT_S:
                    break
                if waiting_since is None:
                    waiting_since = now
                self._wake.clear()
            self._wait(self._wake, delay)
        if waiting_since is not None:
            with self._lock:
                self._throttled_seconds += self._clock() - waiting_since

    def _begin_work(self) -> float:
        """Tell the bucket work starts now (its refill is held for the charge that follows); the time."""
        with self._lock:
            now = self._clock()
            if self._policy is not ThrottlePolicy.OFF:
                self._bucket.start_work(now)
            return now

    def _start_segment(self) -> None:
        start = self._begin_work()
        timer = self._backend.start_timer()
        with self._lock:
            self._segment_start = start
            self._timer = timer

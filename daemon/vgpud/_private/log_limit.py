"""Log lines about client input at a bounded rate: a flood of bad requests must not flood the log.

Each event kind has its own token bucket; what is left out is counted (a metric says how many) and the next
line that gets through says how many of its kind were dropped before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import structlog

_MAX_EVENTS: Final = 256
"""Event kinds are names from the code (methods, caps, reasons); more than this means a bug, not a client."""


class LogLimit:
    """Token buckets per event kind in front of a structlog logger."""

    def __init__(
        self,
        per_s: float,
        *,
        on_dropped: Callable[[str, int], object] = lambda _event, _n: None,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        self._rate = per_s
        self._burst = max(1.0, per_s)
        self._on_dropped = on_dropped
        self._clock = clock
        self._log = logger if logger is not None else structlog.get_logger("vgpud.rpc")
        self._buckets: dict[str, tuple[float, float, int]] = {}
        """event -> (tokens, when counted, dropped since the last line)."""

    def allow(self, event: str) -> int | None:
        """The number dropped since the last line of `event` when one may be logged now, else None (counted)."""
        now = self._clock()
        tokens, then, dropped = self._buckets.get(event, (self._burst, now, 0))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens < 1.0:
            if event in self._buckets or len(self._buckets) < _MAX_EVENTS:
                self._buckets[event] = (tokens, now, dropped + 1)
            self._on_dropped(event, 1)
            return None
        if event in self._buckets or len(self._buckets) < _MAX_EVENTS:
            self._buckets[event] = (tokens - 1.0, now, 0)
        return dropped

    def info(self, message: str, *, event: str, **fields: object) -> None:
        """Log at info unless `event` is over its rate."""
        self._emit("info", message, event, fields)

    def warning(self, message: str, *, event: str, **fields: object) -> None:
        """Log at warning unless `event` is over its rate."""
        self._emit("warning", message, event, fields)

    def _emit(self, level: str, message: str, event: str, fields: dict[str, object]) -> None:
        dropped = self.allow(event)
        if dropped is None:
            return
        if dropped:
            fields["dropped_before"] = dropped
        getattr(self._log, level)(message, **fields)

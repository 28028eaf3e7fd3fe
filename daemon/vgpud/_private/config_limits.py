"""The [limits] table of vgpud's config: what one client may hold of the daemon (connections, streams, idle time).

These bounds are what keeps one user's flood from stopping other users' heartbeats (DESIGN.md, security).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

_MAX_CONNECTIONS = 100_000
_MAX_STREAMS = 100_000
_MAX_IDLE_S = 86_400.0
_MAX_KEEPALIVE_S = 3_600.0
_MAX_LOG_RATE = 1_000.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Per-client bounds ([limits] table)."""

    max_connections_per_uid: int = 64
    """Most open connections to the Unix socket from one local uid (root is not counted); more are closed at once."""
    max_connections: int = 4096
    """Most open connections to the Unix socket and TCP listener together (root's included)."""
    max_streams_per_connection: int = 256
    """Most concurrent calls on one connection (HTTP/2 MAX_CONCURRENT_STREAMS); more wait in the client."""
    idle_timeout_s: float = 300.0
    """A connection with no call in flight for this long is closed (the SDK reconnects when it next calls)."""
    keepalive_min_interval_s: float = 10.0
    """Clients may ping a connection without calls at most this often; faster pingers are disconnected."""
    bad_input_log_per_s: float = 1.0
    """Undecodable or refused requests are logged at most this often per second; the rest are only counted."""


def validate_limits(limits: LimitsConfig, fail: Callable[[str, str], NoReturn]) -> None:
    """Fail with the key and what to change for a bound outside its range."""
    counts = (
        ("max_connections_per_uid", limits.max_connections_per_uid, _MAX_CONNECTIONS),
        ("max_connections", limits.max_connections, _MAX_CONNECTIONS),
        ("max_streams_per_connection", limits.max_streams_per_connection, _MAX_STREAMS),
    )
    for key, value, top in counts:
        if not 1 <= value <= top:
            fail(f"limits.{key}", f"{value} must be from 1 to {top}")
    spans = (
        ("idle_timeout_s", limits.idle_timeout_s, 1.0, _MAX_IDLE_S),
        ("keepalive_min_interval_s", limits.keepalive_min_interval_s, 1.0, _MAX_KEEPALIVE_S),
        ("bad_input_log_per_s", limits.bad_input_log_per_s, 0.01, _MAX_LOG_RATE),
    )
    for key, number, low, high in spans:
        if not (math.isfinite(number) and low <= number <= high):
            fail(f"limits.{key}", f"{number} must be a finite number from {low} to {high}")

"""The [watchdog] table of vgpud's config: how the node watchdog holds leases to their limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

_MAX_S = 24 * 3600.0
_INTERVAL_RANGE_S = (0.1, 600.0)


@dataclass(frozen=True, slots=True)
class WatchdogConfig:
    """The node watchdog ([watchdog] table)."""

    enabled: bool = True
    """Watch this host's lease processes at all."""
    interval_s: float = 2.0
    """How often processes are mapped to leases and measured; 0.1 to 600 seconds."""
    over_budget_grace_s: float = 30.0
    """How long a lease's processes may stay over its memory budget after the warning before it is revoked;
    0 to 86400 seconds."""
    kill: bool = True
    """Stop (SIGTERM, then SIGKILL) the processes of leases revoked for a missed preemption deadline or
    their memory budget; false only logs them."""
    kill_grace_s: float = 10.0
    """How long a process has between SIGTERM and SIGKILL; 0 to 86400 seconds."""
    signal_root_processes: bool = False
    """Also stop processes running as root in a non-root user's lease; false leaves them (and logs it).
    Processes of any other uid than the lease owner's are never signalled."""


def validate_watchdog(cfg: WatchdogConfig, fail: Callable[[str, str], NoReturn]) -> None:
    """Fail with the key and what to change for values the watchdog cannot work with."""
    low, high = _INTERVAL_RANGE_S
    if not low <= cfg.interval_s <= high:
        fail("watchdog.interval_s", f"{cfg.interval_s} must be from {low:g} to {high:g} seconds")
    for key in ("over_budget_grace_s", "kill_grace_s"):
        value = getattr(cfg, key)
        if not 0 <= value <= _MAX_S:
            fail(f"watchdog.{key}", f"{value} must be from 0 to {int(_MAX_S)} seconds")

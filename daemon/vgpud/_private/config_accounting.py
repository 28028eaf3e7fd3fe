"""The [accounting] table of vgpud's config: how often allocation vs. use is sampled, written and kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

_INTERVAL_RANGE_S = (0.1, 600.0)
_MAX_RETENTION_DAYS = 3660


@dataclass(frozen=True, slots=True)
class AccountingConfig:
    """Allocation vs. use accounting ([accounting] table), behind `vgpuctl top` and `vgpuctl report`."""

    enabled: bool = True
    """Sample this node's leases and write their hourly usage to etcd."""
    sample_interval_s: float = 5.0
    """How often held capacity and measured use are sampled (use comes from the node watchdog); 0.1 to 600
    seconds."""
    flush_interval_s: float = 10.0
    """How often the current hour's usage is written to etcd: `vgpuctl top` is at most this stale for other
    nodes (one small write per node per interval). From sample_interval_s to 600 seconds."""
    retention_days: int = 35
    """How long hourly usage is kept; older hours are deleted. 1 to 3660 days."""


def validate_accounting(cfg: AccountingConfig, fail: Callable[[str, str], NoReturn]) -> None:
    """Fail with the key and what to change for values accounting cannot work with."""
    low, high = _INTERVAL_RANGE_S
    for key in ("sample_interval_s", "flush_interval_s"):
        value = getattr(cfg, key)
        if not low <= value <= high:
            fail(f"accounting.{key}", f"{value} must be from {low:g} to {high:g} seconds")
    if cfg.flush_interval_s < cfg.sample_interval_s:
        fail("accounting.flush_interval_s", f"{cfg.flush_interval_s} must be at least sample_interval_s")
    if not 1 <= cfg.retention_days <= _MAX_RETENTION_DAYS:
        fail("accounting.retention_days", f"{cfg.retention_days} must be from 1 to {_MAX_RETENTION_DAYS} days")

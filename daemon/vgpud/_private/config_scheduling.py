"""The [scheduling] table of vgpud's config: fair sharing, preemption and how placement ranks GPUs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from vgpud._private.core.placement_mix import PlacementName

_MAX_WINDOW = 100_000
_MAX_WAITING = 1_000_000


@dataclass(frozen=True, slots=True)
class SchedulingConfig:
    """Fair sharing and preemption ([scheduling] table; classes in [priority_classes.NAME] tables)."""

    default_priority: str = "train"
    """The priority class of a request that names none."""
    backfill_bound_s: float = 60.0
    """Smaller requests may pass a waiting one for this long; after it, it reserves the nodes it could use."""
    reclaim: bool = True
    """Let the leader preempt borrowed capacity (and shrink elastic leases) for projects below their quota."""
    idle_utilization: float = 0.05
    """A lease reporting use under this share of its grant counts as idle."""
    idle_after_s: float = 600.0
    """How long a lease must report idle use before it is flagged idle (and reclaimed first)."""
    grow_interval_s: float = 10.0
    """Elastic leases grow toward their maximum at most this often, when nothing waits."""
    placement: PlacementName = "fgd"
    """How GPUs and nodes are ranked for a grant: "fgd" (fragmentation gradient descent: where the expected
    fragment for the pool's recent requests grows least, ties to best fit) or "best-fit" (the tightest GPU)."""
    placement_window: int = 1000
    """How many of the pool's most recent requests make up the task mix FGD places against."""
    placement_refresh_s: float = 5.0
    """The task mix is rebuilt at most this often, when the pool changed (0: on every change)."""
    max_waiting_per_user: int = 100
    """Most waiting acquire requests of one identity (user or certificate) pool-wide; more are refused."""
    position_update_interval_s: float = 1.0
    """A waiting client hears its queue position at most this often (and only when it changed)."""


def validate_scheduling(
    sched: SchedulingConfig, class_names: Sequence[str], fail: Callable[[str, str], NoReturn]
) -> None:
    """Fail with the key and what to change for values scheduling cannot work with."""
    if sched.default_priority not in class_names:
        fail(
            "scheduling.default_priority",
            f"{sched.default_priority!r} is not a priority class: {', '.join(class_names)}",
        )
    for key in ("backfill_bound_s", "idle_after_s", "grow_interval_s", "placement_refresh_s"):
        if getattr(sched, key) < 0:
            fail(f"scheduling.{key}", f"{getattr(sched, key)} must not be negative")
    if not 0 <= sched.idle_utilization <= 1:
        fail("scheduling.idle_utilization", f"{sched.idle_utilization} must be a share from 0 to 1")
    if not 1 <= sched.max_waiting_per_user <= _MAX_WAITING:
        fail("scheduling.max_waiting_per_user", f"{sched.max_waiting_per_user} must be from 1 to {_MAX_WAITING}")
    if not (math.isfinite(sched.position_update_interval_s) and 0.05 <= sched.position_update_interval_s <= 60):
        fail("scheduling.position_update_interval_s", f"{sched.position_update_interval_s} must be from 0.05 to 60 s")
    if not 1 <= sched.placement_window <= _MAX_WINDOW:
        fail("scheduling.placement_window", f"{sched.placement_window} must be from 1 to {_MAX_WINDOW} requests")

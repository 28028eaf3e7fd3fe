"""The [scheduling] table of vgpud's config: fair sharing, preemption and how placement ranks GPUs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from vgpud._private.core.placement_mix import PlacementName

_MAX_WINDOW = 100_000
_DAY_S = 86_400.0
_DURATIONS_S = {  # key: most seconds; each may be 0
    "backfill_bound_s": _DAY_S,
    "idle_after_s": 7 * _DAY_S,
    "grow_interval_s": _DAY_S,
    "placement_refresh_s": 3_600.0,
}
_MAX_WAITING = 1_000_000
_MIN_UPDATE_S = 0.05
_MAX_UPDATE_S = 60.0


@dataclass(frozen=True, slots=True)
class SchedulingConfig:
    """Fair sharing and preemption ([scheduling] table; classes in [priority_classes.NAME] tables)."""

    default_priority: str = "train"
    """The priority class of a request that names none."""
    backfill_bound_s: float = 60.0
    """Smaller requests may pass a waiting one for this long; after it, it reserves the nodes it could use.
    0 to 86400 seconds (a day)."""
    reclaim: bool = True
    """Let the leader preempt borrowed capacity (and shrink elastic leases) for projects below their quota."""
    idle_utilization: float = 0.05
    """A lease reporting use under this share of its grant counts as idle; a share from 0 to 1."""
    idle_after_s: float = 600.0
    """How long a lease must report idle use before it is flagged idle (and reclaimed first); 0 to 604800
    seconds (7 days)."""
    grow_interval_s: float = 10.0
    """Elastic leases grow toward their maximum at most this often, when nothing waits; 0 to 86400 seconds."""
    placement: PlacementName = "fgd"
    """How GPUs and nodes are ranked for a grant: "fgd" (fragmentation gradient descent: where the expected
    fragment for the pool's recent requests grows least, ties to best fit) or "best-fit" (the tightest GPU)."""
    placement_window: int = 1000
    """How many of the pool's most recent requests make up the task mix FGD places against; 1 to 100000."""
    placement_refresh_s: float = 5.0
    """The task mix is rebuilt at most this often, when the pool changed (0: on every change); at most 3600
    seconds."""
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
    for key, most in _DURATIONS_S.items():
        value = getattr(sched, key)
        if not (math.isfinite(value) and 0 <= value <= most):
            fail(f"scheduling.{key}", f"{value} must be from 0 to {most:.0f} seconds")
    if not 0 <= sched.idle_utilization <= 1:
        fail("scheduling.idle_utilization", f"{sched.idle_utilization} must be a share from 0 to 1")
    if not 1 <= sched.max_waiting_per_user <= _MAX_WAITING:
        fail("scheduling.max_waiting_per_user", f"{sched.max_waiting_per_user} must be from 1 to {_MAX_WAITING}")
    if not (
        math.isfinite(sched.position_update_interval_s)
        and _MIN_UPDATE_S <= sched.position_update_interval_s <= _MAX_UPDATE_S
    ):
        fail(
            "scheduling.position_update_interval_s",
            f"{sched.position_update_interval_s} must be from {_MIN_UPDATE_S} to {_MAX_UPDATE_S} s",
        )
    if not 1 <= sched.placement_window <= _MAX_WINDOW:
        fail("scheduling.placement_window", f"{sched.placement_window} must be from 1 to {_MAX_WINDOW} requests")

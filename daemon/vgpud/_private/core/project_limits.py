"""Project limits at write time: which lease changes raise a project's holdings, and how much room is left.

The leader's queue order checks limits when it decides; these checks are for the moment of the write, when
the daemon that writes (the asked daemon on the fast path, the leader for queued requests, resumes and
growth) sees what it and the other writers committed. Pure: leases and quotas in, answers out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import ShapeRequest
from vgpud._private.core.projects import Quota, Usage, lease_usage, project_of

_UNBOUNDED = 1 << 62
"""Room in a dimension the quota does not limit (more than any pool holds)."""


def limited(quota: Quota | None) -> bool:
    """Whether the quota caps anything (a project without a limit skips every check here)."""
    return quota is not None and bool(quota.limit_milli or quota.limit_memory_bytes)


def held_by(project: str, leases: Iterable[LeaseRecord]) -> Usage:
    """What `project` holds through `leases` (other projects' leases are skipped)."""
    total = Usage()
    for lease in leases:
        if project_of(lease) == project:
            total += lease_usage(lease)
    return total


def raises_holdings(before: LeaseRecord | None, after: LeaseRecord) -> bool:
    """Whether writing `after` over `before` (None: a new lease) makes its project hold more of anything.

    Such a write must pass the limit check and the project's guard; a write that holds the same or less
    (a release, a preemption, an idle flag, a shrink) never can break a limit and passes freely.
    """
    old = lease_usage(before) if before is not None else Usage()
    new = lease_usage(after)
    return new.milli > old.milli or new.memory_bytes > old.memory_bytes


def room(held: Usage, quota: Quota) -> Usage:
    """What the project may still take before its limit (unbounded in a dimension it does not limit)."""
    milli = quota.limit_milli - held.milli if quota.limit_milli else _UNBOUNDED
    memory = quota.limit_memory_bytes - held.memory_bytes if quota.limit_memory_bytes else _UNBOUNDED
    return Usage(max(0, milli), max(0, memory))


def fits(use: Usage, left: Usage) -> bool:
    """Whether taking `use` stays within `left` in both dimensions."""
    return use.milli <= left.milli and use.memory_bytes <= left.memory_bytes


def at_minimum(request: ShapeRequest) -> ShapeRequest:
    """An elastic request at its minimum only (what is placed when its maximum would cross the limit)."""
    return replace(request, compute_milli_max=0, count_max=0)


def compute_growth_cap(target: int, current: Iterable[int], left: Usage) -> int:
    """The compute share (milli per slice) to grow shared slices now at `current` toward `target` within `left`.

    Every slice is set to the same share, so the cost is at most (share - smallest current) per slice. Never
    below the largest current share (growth must not shrink a slice); the write's own limit check has the
    last word when slices differ.
    """
    shares = list(current)
    if not shares or target <= max(shares):
        return target
    cap = min(shares) + left.milli // len(shares)
    return max(*shares, min(target, cap))


def slices_within(wanted: int, per_slice: Usage, left: Usage) -> int:
    """How many of `wanted` more slices of `per_slice` each fit in `left`."""
    most = wanted
    if per_slice.milli:
        most = min(most, left.milli // per_slice.milli)
    if per_slice.memory_bytes:
        most = min(most, left.memory_bytes // per_slice.memory_bytes)
    return max(0, most)

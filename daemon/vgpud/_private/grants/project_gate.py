"""Project limits that hold when several writers grant for one project at once: the guard key projgate/<project>.

Each daemon grants on its own node directly (the fast path) and the leader grants, resumes and grows
leases from the queue; each decides on its own view. A project's holdings are no single key, so comparing
the GPU states a grant touches cannot stop two grants on different nodes from both passing the limit.
Hence every write that raises a limited project's holdings checks the limit against what its overlay sees
(the view plus what earlier items of the same batch staged) and rewrites the project's guard key,
comparing the mod revision the view holds for it. Of two such writes decided on the same view, the second
fails its compare; its batch is built again only once the view's watch has delivered the write that moved
the key (a transaction's events arrive together), so the rebuild counts the other grant and refuses or
places less. The view's copy of the key therefore never runs ahead of the leases behind it: own commits
are applied with their leases, and a key that moved under a failed compare is never read into the view
directly. Releases never touch the key: they only lower holdings, and a view that still counts a released
lease errs on the safe side. Projects without a limit pay one dict lookup per lease write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from vgpu._private import reasons
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import ShapeRequest
from vgpud._private.core.placement import Placement, Unplaceable
from vgpud._private.core.project_limits import (
    at_minimum,
    compute_growth_cap,
    fits,
    limited,
    raises_holdings,
    room,
    slices_within,
)
from vgpud._private.core.projects import DEFAULT_PROJECT, Quota, Usage, project_of
from vgpud._private.core.queue_order import placed_use
from vgpud._private.pool_view import PoolView
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys

if TYPE_CHECKING:
    from vgpud._private.grants.write_batch import Overlay

_GATE = "projgate"


def limit_of(view: PoolView, project: str) -> Quota | None:
    """The project's quota when it has a limit; None: nothing to check and nothing to guard."""
    quota = view.quota(project or DEFAULT_PROJECT)
    return quota.value if quota is not None and limited(quota.value) else None


def check_raise(overlay: Overlay, quota: Quota, before: LeaseRecord | None, after: LeaseRecord) -> None:
    """For a staged lease write: refuse it if it raises its project past the limit, else guard the project.

    `after` is already staged, so the holdings counted include it and every earlier item of the batch.
    """
    if not raises_holdings(before, after):
        return
    project = project_of(after)
    over = overlay.project_held(project).over_limit(quota)
    if over:
        raise Refusal(reasons.OVER_QUOTA, f"project {project} is at its limit: {over}")
    overlay.gate(project)


def within_limit(
    overlay: Overlay,
    project: str,
    request: ShapeRequest,
    place: Callable[[ShapeRequest], Placement | Unplaceable],
) -> Placement | Unplaceable:
    """`place(request)`, but an elastic request whose maximum would cross its project's limit at its minimum.

    `place` is the caller's placement (it tries an elastic maximum first); the leader's queue order makes
    the same choice when it decides, so a write never refuses what the decision admitted at the minimum.
    """
    result = place(request)
    name = project or DEFAULT_PROJECT
    quota = limit_of(overlay.view, name)
    if quota is None or not request.elastic or isinstance(result, Unplaceable):
        return result
    if fits(placed_use(result), room(overlay.project_held(name), quota)):
        return result
    return place(at_minimum(request))


def grown_share(overlay: Overlay, lease: LeaseRecord, target: int, shares: Iterable[int]) -> int:
    """The compute share to grow a lease's shared slices (now at `shares`) toward `target` within its limit."""
    left = _room_of(overlay, lease)
    return target if left is None else compute_growth_cap(target, shares, left)


def more_slices_within(overlay: Overlay, lease: LeaseRecord, wanted: int, per_slice: Usage) -> int:
    """How many of `wanted` more slices (each `per_slice`) a lease may add within its project's limit."""
    left = _room_of(overlay, lease)
    return wanted if left is None else slices_within(wanted, per_slice, left)


def _room_of(overlay: Overlay, lease: LeaseRecord) -> Usage | None:
    project = project_of(lease)
    quota = limit_of(overlay.view, project)
    return None if quota is None else room(overlay.project_held(project), quota)


def is_gate(keys: Keys, key: str) -> bool:
    """Whether `key` is a project's guard key."""
    where = keys.split(key)
    return where is not None and where[0] == _GATE


async def caught_up(view: PoolView, moved: Mapping[str, int], timeout: float) -> bool:
    """Wait until the view's watch has delivered each guard key at least at its revision in `moved`.

    The watch brings the key with the leases written beside it, so a rebuild after this sees them. False
    when the watch lags longer than `timeout` (etcd unreachable or far behind): the caller gives up.
    """
    deadline = time.monotonic() + timeout
    while True:
        generation = view.generation
        if all(view.key_revision(key) >= revision for key, revision in moved.items()):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await view.wait_changed(generation, timeout=left)

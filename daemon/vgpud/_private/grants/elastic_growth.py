"""Which elastic leases can grow toward their maximum compute now, and to how much (idle capacity only)."""

from __future__ import annotations

from vgpud._private.core.model import Isolation, LeaseState
from vgpud._private.core.reclaim import Resize
from vgpud._private.pool_view import PoolView

MAX_GROWS_PER_PASS = 16


def growable(view: PoolView) -> list[Resize]:
    """Resizes upward: elastic shared leases with free compute beside them, count-elastic leases below max.

    A count grow is only tried (the write places what fits, and is refused when nothing does).
    """
    out: list[Resize] = []
    free = {uuid: 1000 - view.gpu_state(uuid).value.compute_claimed for uuid in view.gpus()}
    for versioned in view.live_leases():
        lease = versioned.value
        if lease.state is LeaseState.GRANTED and lease.request.count_max > len(lease.slices) >= lease.request.count:
            out.append(Resize(lease.id, 0, lease.request.count_max))
            continue
        high = lease.request.compute_milli_max
        if lease.state is not LeaseState.GRANTED or high <= lease.request.compute_milli:
            continue
        shared = [s for s in lease.slices if s.isolation is Isolation.SHARED]
        if not shared or all(s.compute_milli >= high for s in shared):
            continue
        target = min(min(s.compute_milli + free.get(s.gpu_uuid, 0), high) for s in shared)
        if target <= min(s.compute_milli for s in shared):
            continue
        for s in shared:
            free[s.gpu_uuid] = free.get(s.gpu_uuid, 0) - (target - s.compute_milli)
        out.append(Resize(lease.id, target))
        if len(out) >= MAX_GROWS_PER_PASS:
            break
    return out

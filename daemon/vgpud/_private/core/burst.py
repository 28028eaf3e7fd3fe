"""Whether a lease's GPUs are otherwise idle: what lets a "burst" compute policy use the whole GPU (pure).

The daemon answers every heartbeat with it. Only shared slices can burst (a MIG instance or a whole GPU
already is all the lease may use). Another lease on the same GPU leaves it idle only when it is known to
be idle: flagged idle, or measured under the idle threshold; a lease nothing measured counts as busy, so
bursting never takes time a neighbour might be using.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import Isolation


def gpu_otherwise_idle(
    lease: LeaseRecord,
    holders: Callable[[str], Iterable[str]],
    lease_of: Callable[[str], LeaseRecord | None],
    utilization: Callable[[str], float | None],
    idle_below: float,
) -> bool:
    """True when no other lease uses the GPUs of `lease`'s shared slices now.

    `holders(gpu_uuid)` gives the lease ids with claims on a GPU, `lease_of` their records, `utilization(lease_id)`
    what the node watchdog last measured for a lease (busy share, 0 to 1; None: nothing measured).
    """
    if not lease.slices or any(s.isolation is not Isolation.SHARED for s in lease.slices):
        return False
    for gpu in {s.gpu_uuid for s in lease.slices}:
        for other_id in holders(gpu):
            if other_id == lease.id:
                continue
            other = lease_of(other_id)
            if other is None or other.idle_since > 0:
                continue  # ended meanwhile, or flagged idle
            used = utilization(other_id)
            if used is None or used >= idle_below:
                return False
    return True

"""Fair shares of the pool (KAI-Scheduler style) and the order in which projects are served.

Each project first gets what it asks up to its deserved quota; capacity left over is split among the
projects that want more in proportion to their over-quota weight (water filling), never past a limit or
what the project asks for. Projects below their deserved quota are served first, then the one with the
smallest dominant-resource share per unit of weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vgpud._private.core.projects import Quota, Usage


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the pool can hold: milli-GPU and GPU memory of its schedulable GPUs."""

    milli: int
    memory_bytes: int


def fair_shares(quotas: Mapping[str, Quota], demand: Mapping[str, int], capacity_milli: int) -> dict[str, int]:
    """Milli-GPU each project should hold now, given what it holds plus waits for (`demand`)."""
    share = {p: min(demand.get(p, 0), q.deserved_milli) for p, q in quotas.items()}
    left = max(0, capacity_milli - sum(share.values()))

    def cap(p: str) -> int:
        want = demand.get(p, 0)
        limit = quotas[p].limit_milli
        return min(want, limit) if limit else want

    hungry = {p for p in quotas if share[p] < cap(p) and quotas[p].over_quota_weight > 0}
    while left > 0 and hungry:
        weight = sum(quotas[p].over_quota_weight for p in hungry)
        given = 0
        for p in sorted(hungry):
            part = int(left * quotas[p].over_quota_weight / weight)
            take = min(max(part, 1), cap(p) - share[p], left - given)
            share[p] += take
            given += take
        left -= given
        hungry = {p for p in hungry if share[p] < cap(p)}
        if given == 0:
            break
    return share


def dominant_share(used: Usage, capacity: Capacity) -> float:
    """The larger of the GPU and memory fractions of the pool a project holds (DRF)."""
    milli = used.milli / capacity.milli if capacity.milli else 0.0
    memory = used.memory_bytes / capacity.memory_bytes if capacity.memory_bytes else 0.0
    return max(milli, memory)


def project_rank(quota: Quota, used: Usage, asked: Usage, capacity: Capacity) -> tuple[int, float]:
    """Sort key of a project's next request: below-deserved first, then the smallest weighted DRF share."""
    below = 0 if (used + asked).within(quota) and quota.deserved_milli > 0 else 1
    weight = quota.over_quota_weight if quota.over_quota_weight > 0 else 1e-9
    return below, dominant_share(used, capacity) / weight

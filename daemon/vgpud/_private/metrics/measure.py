"""The numbers behind the series: the pool view plus what this node measured, turned into snapshots (pure).

Use ("used" memory and compute) comes from two places: NVML's device readings on real GPUs (every process on
the GPU counts), and per lease what the node watchdog last saw (NVML per process, or the runtime's
`report_usage` on simulated GPUs). A GPU without a device reading gets the sum of its leases' reports, each
lease's memory split over its slices here by their memory budgets and its utilisation counted per device as
the usage ledger counts it (a MIG instance for its share of the GPU, any other slice for the whole device).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vgpud._private.backend.base import DeviceUse
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import GpuRecord, GpuState, Isolation, LeaseState
from vgpud._private.core.projects import HOLDING, Quota, Usage, project_of, usage_by_project
from vgpud._private.core.queue_order import Waiting
from vgpud._private.metrics.snapshots import (
    GpuSeries,
    LeaseUseSeries,
    PoolSnapshot,
    ProjectAllocation,
    ProjectUse,
)
from vgpud._private.node_watchdog import LeaseUse
from vgpud._private.usage_ledger import sample_of

MILLI = 1000


@dataclass(slots=True)
class Reported:
    """Per GPU: the measurements of the leases holding slices on it, summed."""

    memory_bytes: float = 0.0
    memory_measured: bool = False
    busy: float = 0.0
    busy_measured: bool = False


def _clamp(share: float) -> float:
    return min(1.0, max(0.0, share))


def _local_holding(leases: Iterable[LeaseRecord], node: str) -> Iterable[LeaseRecord]:
    return (lease for lease in leases if lease.state in HOLDING and any(s.node == node for s in lease.slices))


def reported_gpu_use(leases: Iterable[LeaseRecord], node: str, uses: Mapping[str, LeaseUse]) -> dict[str, Reported]:
    """Per GPU of `node`: what its holding leases' measurements add up to (GPUs no lease holds are left out)."""
    out: dict[str, Reported] = {}
    for lease in _local_holding(leases, node):
        local = [s for s in lease.slices if s.node == node]
        use = uses.get(lease.id)
        budget = sum(s.memory_bytes for s in local)
        for s in local:
            acc = out.setdefault(s.gpu_uuid, Reported())
            if use is None:
                continue
            if use.memory_bytes is not None:
                acc.memory_bytes += use.memory_bytes * (s.memory_bytes / budget if budget else 1 / len(local))
                acc.memory_measured = True
            if use.utilization is not None:
                device = s.compute_milli / MILLI if s.isolation is Isolation.MIG else 1.0
                acc.busy += _clamp(use.utilization) * device
                acc.busy_measured = True
    return out


def gpu_series(
    records: Iterable[GpuRecord],
    states: Mapping[str, GpuState],
    reported: Mapping[str, Reported],
    device: Mapping[str, DeviceUse],
    *,
    simulated: bool,
) -> tuple[GpuSeries, ...]:
    """This node's GPUs: allocation from the view, use from NVML where it reads the device, else the reports.

    `simulated`: a GPU no lease holds uses nothing (a simulated GPU runs nothing but what leases report);
    on a real one whose device NVML cannot read, its use is unknown.
    """
    out = []
    idle = 0.0 if simulated else None
    for record in records:
        state = states[record.uuid]
        mine = reported.get(record.uuid)
        memory: float | None = idle if mine is None else (mine.memory_bytes if mine.memory_measured else None)
        busy: float | None = idle if mine is None else (_clamp(mine.busy) if mine.busy_measured else None)
        read = device.get(record.uuid)
        if read is not None and read.memory_used_bytes is not None:
            memory = read.memory_used_bytes
        if read is not None and read.utilization is not None:
            busy = read.utilization
        out.append(
            GpuSeries(
                uuid=record.uuid,
                model=record.model,
                memory_capacity_bytes=record.memory_bytes,
                memory_allocated_bytes=state.memory_claimed,
                compute_allocated_ratio=state.compute_claimed / MILLI,
                memory_used_bytes=None if memory is None else round(memory),
                utilization_ratio=busy,
            )
        )
    return tuple(out)


def project_use(leases: Iterable[LeaseRecord], node: str, uses: Mapping[str, LeaseUse]) -> dict[str, ProjectUse]:
    """Per project, what its leases holding slices on `node` were measured using there (the ledger's arithmetic)."""
    memory: dict[str, int] = {}
    compute: dict[str, float] = {}
    for lease in leases:
        sample = sample_of(lease, node, uses.get(lease.id))
        if sample is None:
            continue
        project = project_of(lease)
        if sample.memory_used_bytes is not None:
            memory[project] = memory.get(project, 0) + sample.memory_used_bytes
        if sample.utilization is not None:
            compute[project] = compute.get(project, 0.0) + _clamp(sample.utilization) * sample.device_gpus
    return {p: ProjectUse(memory.get(p), compute.get(p)) for p in sorted(set(memory) | set(compute))}


def lease_series(leases: Mapping[str, LeaseRecord], uses: Mapping[str, LeaseUse]) -> tuple[LeaseUseSeries, ...]:
    """The leases the watchdog measures now, labelled with their project as quotas name it."""
    out = []
    for lease_id, use in sorted(uses.items()):
        lease = leases.get(lease_id)
        project = project_of(lease) if lease is not None else (use.project or "default")
        out.append(LeaseUseSeries(lease_id, project, use.memory_bytes, use.utilization))
    return tuple(out)


def pool_snapshot(
    leases: Iterable[LeaseRecord], quotas: Mapping[str, Quota], waiting: Iterable[Waiting], now: float
) -> PoolSnapshot:
    """Leases by state, the queue and every project's allocation, as `vgpuctl quota list` and `queue` show them."""
    live = list(leases)
    queue = list(waiting)
    counts = Counter(lease.state.value for lease in live)
    held = usage_by_project(live)
    holding = Counter(project_of(lease) for lease in live if lease.state in HOLDING)
    asking = Counter(w.project for w in queue)
    names = set(quotas) | {project_of(lease) for lease in live} | set(asking)
    projects = {}
    for name in sorted(names):
        usage = held.get(name, Usage())
        projects[name] = ProjectAllocation(
            compute_gpus=usage.milli / MILLI,
            memory_bytes=usage.memory_bytes,
            leases=holding.get(name, 0),
            waiting=asking.get(name, 0),
        )
    return PoolSnapshot(
        leases_by_state={s.value: counts.get(s.value, 0) for s in LeaseState if not s.ended},
        queue_length=len(queue),
        oldest_wait_seconds=max((max(0.0, now - w.since) for w in queue), default=0.0),
        projects=projects,
    )

"""Allocation vs. use: what each lease held and what it used, summed per node and hour (pure).

A node daemon samples its leases every few seconds (`add_sample`), keeps one `HourBucket` per hour and writes
it to etcd; `vgpuctl top` reads the latest sample of each lease and `vgpuctl report` sums buckets per
project (`project_totals`). Units: GPU-seconds, where one whole GPU for one second is 1.0; a MIG instance or
a time-sliced share counts for its compute fraction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vgpud._private.core.model import dumps_record, loads_record
from vgpud._private.core.projects import DEFAULT_PROJECT

HOUR_S = 3600
MAX_SAMPLE_GAP_S = 60.0
"""A longer gap between samples (daemon stopped, event loop stalled) is counted as this long: a lease's time
while nobody watched is not billed as held-and-measured."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One lease on one node at one instant, as the node daemon saw it."""

    lease_id: str
    project: str
    user: str
    held_gpus: float
    """Compute held on this node in GPUs (sum of the slices' compute fractions)."""
    device_gpus: float
    """What a utilisation of 1.0 means in GPUs: 1 per whole or time-sliced GPU, the compute fraction per MIG
    instance (utilisation is measured per device)."""
    memory_budget_bytes: int
    memory_used_bytes: int | None
    """None: not measured (no process of the lease seen, no runtime report)."""
    utilization: float | None
    """Busy share of the lease's devices (0 to 1), None when not measured."""
    processes: int = 0


@dataclass(slots=True, kw_only=True)
class UsageSums:
    """Seconds held and measured, GPU-seconds allocated and used, memory x seconds: what reports add up."""

    held_s: float = 0.0
    """Wall seconds the lease held capacity here."""
    allocated_gpu_s: float = 0.0
    measured_s: float = 0.0
    """Of `held_s`, the seconds with a utilisation measurement."""
    used_gpu_s: float = 0.0
    """GPU-seconds used during the measured seconds."""
    allocated_measured_gpu_s: float = 0.0
    """GPU-seconds allocated during the measured seconds (the fair base for a use ratio)."""
    budget_byte_s: float = 0.0
    used_byte_s: float = 0.0
    """Memory used x seconds, over the seconds with a memory measurement."""
    memory_measured_s: float = 0.0

    def add(self, other: UsageSums) -> None:
        """Add another lease's (or hour's) sums into these."""
        for f in dataclasses.fields(UsageSums):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(slots=True)
class LeaseTally(UsageSums):
    """One lease's sums within one hour on one node, and its latest sample."""

    project: str
    user: str
    last_at: float = 0.0
    held_gpus: float = 0.0
    memory_budget_bytes: int = 0
    memory_used_bytes: int | None = None
    utilization_gpus: float | None = None
    """Latest use in GPUs (utilisation x device GPUs)."""
    processes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (field names kept: etcdctl output stays readable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LeaseTally:
        """Inverse of `to_dict`; missing fields take their defaults, unknown ones are ignored."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass(slots=True)
class HourBucket:
    """What one node saw in one hour (key usage/<hour>/<node>)."""

    node: str
    hour: int
    """Start of the hour, Unix seconds."""
    leases: dict[str, LeaseTally] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Serialise for etcd."""
        return dumps_record(
            {"node": self.node, "hour": self.hour, "leases": {k: v.to_dict() for k, v in self.leases.items()}}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> HourBucket:
        """Inverse of `to_json`; ValueError for something that is not a bucket."""
        data = loads_record(raw)
        if not isinstance(data.get("leases"), dict):
            raise ValueError("not a usage bucket")  # noqa: TRY004 -- callers catch ValueError for bad records
        return cls(
            node=str(data.get("node", "")),
            hour=int(data.get("hour", 0)),
            leases={str(k): LeaseTally.from_dict(v) for k, v in data["leases"].items()},
        )


def hour_of(at: float) -> int:
    """The start of the hour `at` falls in."""
    return int(at // HOUR_S) * HOUR_S


def add_sample(bucket: HourBucket, sample: Sample, *, at: float, seconds: float) -> None:
    """Count `seconds` (capped at MAX_SAMPLE_GAP_S) of `sample` into `bucket` and make it the latest."""
    dt = max(0.0, min(seconds, MAX_SAMPLE_GAP_S))
    tally = bucket.leases.get(sample.lease_id)
    if tally is None:
        tally = bucket.leases[sample.lease_id] = LeaseTally(sample.project, sample.user)
    tally.held_s += dt
    tally.allocated_gpu_s += dt * sample.held_gpus
    tally.budget_byte_s += dt * sample.memory_budget_bytes
    used_gpus = None
    if sample.utilization is not None:
        used_gpus = min(max(sample.utilization, 0.0), 1.0) * sample.device_gpus
        tally.measured_s += dt
        tally.used_gpu_s += dt * used_gpus
        tally.allocated_measured_gpu_s += dt * sample.held_gpus
    if sample.memory_used_bytes is not None:
        tally.memory_measured_s += dt
        tally.used_byte_s += dt * sample.memory_used_bytes
    tally.last_at = at
    tally.held_gpus = sample.held_gpus
    tally.memory_budget_bytes = sample.memory_budget_bytes
    tally.memory_used_bytes = sample.memory_used_bytes
    tally.utilization_gpus = used_gpus
    tally.processes = sample.processes


@dataclass(slots=True)
class ProjectTotals(UsageSums):
    """One project's allocation and use over a report's window."""

    project: str
    leases: set[str] = field(default_factory=set)
    idle_leases: list[str] = field(default_factory=list)
    """Leases measured for at least half their time whose use stayed under the idle threshold."""

    @property
    def use_ratio(self) -> float | None:
        """Used over allocated GPU-seconds, over the measured time only; None when nothing was measured."""
        if self.allocated_measured_gpu_s <= 0:
            return None
        return self.used_gpu_s / self.allocated_measured_gpu_s


def project_totals(
    buckets: Iterable[HourBucket], *, idle_utilization: float, project: str = ""
) -> dict[str, ProjectTotals]:
    """Per project, the sums of every bucket (one project when `project` is set); idle leases listed."""
    per_lease: dict[str, LeaseTally] = {}
    for bucket in buckets:
        for lease_id, tally in bucket.leases.items():
            if project and (tally.project or DEFAULT_PROJECT) != project:  # a lease that named none
                continue
            total = per_lease.get(lease_id)
            if total is None:
                per_lease[lease_id] = total = LeaseTally(tally.project, tally.user)
            total.add(tally)
    totals: dict[str, ProjectTotals] = {}
    for lease_id, tally in sorted(per_lease.items()):
        row = totals.get(tally.project)
        if row is None:
            row = totals[tally.project] = ProjectTotals(tally.project)
        row.leases.add(lease_id)
        row.add(tally)
        if _idle(tally, idle_utilization):
            row.idle_leases.append(lease_id)
    return totals


def _idle(tally: LeaseTally, threshold: float) -> bool:
    """Measured for at least half its held time, and used under `threshold` of what it held then."""
    if tally.held_s <= 0 or tally.measured_s < tally.held_s / 2 or tally.allocated_measured_gpu_s <= 0:
        return False
    return tally.used_gpu_s < threshold * tally.allocated_measured_gpu_s

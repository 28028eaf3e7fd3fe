"""Projects and their quotas (key projects/<name>), and what a lease counts against its project.

Capacity is counted in milli-GPU (a whole GPU is 1000, a shared slice its compute share, a MIG instance its
share of the GPU's compute) plus GPU memory; KAI-Scheduler's terms: deserved quota, over-quota weight, limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import LeaseState

DEFAULT_PROJECT: Final = "default"
"""The project of a request that names none: no deserved quota (it only borrows), weight 1, no limit."""

HOLDING: Final = frozenset({LeaseState.GRANTED, LeaseState.RESIZING, LeaseState.PREEMPTING})
"""Lease states that hold capacity (a suspended lease holds none; it waits to resume)."""


@dataclass(frozen=True, slots=True)
class Quota:
    """A project's quota as stored in etcd."""

    project: str
    deserved_milli: int = 0
    """Guaranteed capacity: requests within it go first and are never preempted for others' borrowing."""
    deserved_memory_bytes: int = 0
    """Guaranteed GPU memory (0: the quota is in compute only)."""
    over_quota_weight: float = 1.0
    """Share of idle capacity beyond deserved, relative to the other projects' weights."""
    limit_milli: int = 0
    """Most the project may hold, borrowing included (0: no limit)."""
    limit_memory_bytes: int = 0
    """Most GPU memory the project may hold (0: no limit)."""
    members: tuple[str, ...] = ()
    """Who may acquire in it: "user:NAME" / "group:NAME", resolved on each host (empty: admins only)."""

    def to_json(self) -> bytes:
        """Serialise for etcd."""
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}
        data["members"] = list(self.members)
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Quota:
        """Parse what to_json wrote."""
        data: Any = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("quota record is not a JSON object")  # noqa: TRY004 -- callers catch ValueError
        return cls(
            project=str(data["project"]),
            deserved_milli=int(data.get("deserved_milli", 0)),
            deserved_memory_bytes=int(data.get("deserved_memory_bytes", 0)),
            over_quota_weight=float(data.get("over_quota_weight", 1.0)),
            limit_milli=int(data.get("limit_milli", 0)),
            limit_memory_bytes=int(data.get("limit_memory_bytes", 0)),
            members=tuple(str(m) for m in data.get("members", ())),
        )


def default_quota(project: str) -> Quota:
    """The quota of a project nobody configured (only the default project is used that way)."""
    return Quota(project)


@dataclass(frozen=True, slots=True)
class Usage:
    """Capacity held (or asked for): milli-GPU and GPU memory."""

    milli: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.milli + other.milli, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.milli - other.milli, self.memory_bytes - other.memory_bytes)

    def within(self, quota: Quota) -> bool:
        """Whether this much stays inside the project's deserved quota."""
        memory_ok = not quota.deserved_memory_bytes or self.memory_bytes <= quota.deserved_memory_bytes
        return self.milli <= quota.deserved_milli and memory_ok

    def over_limit(self, quota: Quota) -> str:
        """Why this much is above the project's limit ("" when it is not)."""
        if quota.limit_milli and self.milli > quota.limit_milli:
            return f"{self.milli} milli-GPU is above project {quota.project}'s limit of {quota.limit_milli}"
        if quota.limit_memory_bytes and self.memory_bytes > quota.limit_memory_bytes:
            return (
                f"{self.memory_bytes} bytes of GPU memory is above project {quota.project}'s limit of "
                f"{quota.limit_memory_bytes}"
            )
        return ""


def lease_usage(lease: LeaseRecord) -> Usage:
    """What a lease holds now (nothing unless it is in a holding state)."""
    if lease.state not in HOLDING:
        return Usage()
    return Usage(sum(s.compute_milli for s in lease.slices), sum(s.memory_bytes for s in lease.slices))


def project_of(lease: LeaseRecord) -> str:
    """The project a lease counts against."""
    return lease.project or DEFAULT_PROJECT


def usage_by_project(leases: Iterable[LeaseRecord]) -> dict[str, Usage]:
    """Held capacity per project."""
    out: dict[str, Usage] = {}
    for lease in leases:
        used = lease_usage(lease)
        if used.milli or used.memory_bytes:
            name = project_of(lease)
            out[name] = out.get(name, Usage()) + used
    return out

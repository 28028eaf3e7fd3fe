"""The authorization table: every RPC of every service vgpud serves, and who may call it. Deny by default.

A method missing here is refused for everyone (tests/unit/test_auth_rules.py walks the proto descriptors and
fails on any method without an entry). Finer rules live with the handlers: project membership and priority
classes at Acquire, lease ownership (the token and the owner's identity) on every lease call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from vgpud._private.auth.identity import Role

WORKLOAD: Final = "vgpu.api.v1.WorkloadService"
ADMIN: Final = "vgpu.api.v1.AdminService"
JOBS: Final = "vgpu.api.v1.JobService"
HEALTH: Final = "grpc.health.v1.Health"
REFLECTION: Final = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1: Final = "grpc.reflection.v1.ServerReflection"


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call one method."""

    roles: frozenset[Role]
    """Roles allowed; empty with `open` for methods that need no identity."""
    mutation: bool = False
    """An admin mutation: every allowed call leaves an audit record too."""
    open: bool = False
    """No identity needed: health checks and the API's own description (reflection)."""


_EVERYONE = frozenset(Role)
_PEOPLE = frozenset({Role.USER, Role.ADMIN})
_ADMINS = frozenset({Role.ADMIN})

OPEN: Final = Rule(frozenset(), open=True)
READ: Final = Rule(_EVERYONE)
"""Reads of the pool: nodes, GPUs, leases (others' without owner and environment), queue, quotas, usage."""
WORKLOAD_CALL: Final = Rule(_PEOPLE)
"""Acquire and lease calls: users (in their projects, on their own leases) and admins (anywhere)."""
NODE_CALL: Final = Rule(frozenset({Role.NODE}))
"""Daemon to daemon: a node vouches for the launcher it relays (RunOnNode)."""
ADMIN_MUTATION: Final = Rule(_ADMINS, mutation=True)
ADMIN_READ: Final = Rule(_ADMINS)

RULES: Final[Mapping[str, Rule]] = MappingProxyType(
    {
        f"{WORKLOAD}/Acquire": WORKLOAD_CALL,
        f"{WORKLOAD}/Release": WORKLOAD_CALL,
        f"{WORKLOAD}/Heartbeat": WORKLOAD_CALL,
        f"{WORKLOAD}/GetLease": WORKLOAD_CALL,
        f"{WORKLOAD}/ListLeases": READ,
        f"{WORKLOAD}/WatchLease": WORKLOAD_CALL,
        f"{WORKLOAD}/AckPreempt": WORKLOAD_CALL,
        f"{JOBS}/RunJob": WORKLOAD_CALL,
        f"{JOBS}/RunOnNode": NODE_CALL,
        f"{ADMIN}/ListNodes": READ,
        f"{ADMIN}/ListGpus": READ,
        f"{ADMIN}/ListAllLeases": READ,
        f"{ADMIN}/EvictLease": ADMIN_MUTATION,
        f"{ADMIN}/SetGpuMode": ADMIN_MUTATION,
        f"{ADMIN}/DrainNode": ADMIN_MUTATION,
        f"{ADMIN}/PlanMigLayout": ADMIN_READ,
        f"{ADMIN}/SetQuota": ADMIN_MUTATION,
        f"{ADMIN}/GetQuota": READ,
        f"{ADMIN}/ListQuotas": READ,
        f"{ADMIN}/DeleteQuota": ADMIN_MUTATION,
        f"{ADMIN}/ListQueue": READ,
        f"{ADMIN}/PreemptLease": ADMIN_MUTATION,
        f"{ADMIN}/ListLeaseUsage": READ,
        f"{ADMIN}/GetUsageReport": READ,
        f"{ADMIN}/ListAudit": ADMIN_READ,
        f"{HEALTH}/Check": OPEN,
        f"{HEALTH}/Watch": OPEN,
        f"{HEALTH}/List": OPEN,
        f"{REFLECTION}/ServerReflectionInfo": OPEN,
        f"{REFLECTION_V1}/ServerReflectionInfo": OPEN,
    }
)
"""Full method name ("package.Service/Method") -> rule."""


def rule_for(method: str) -> Rule | None:
    """The rule of a full method name; None means nobody may call it."""
    return RULES.get(method)


def short(method: str) -> str:
    """The method without its package, e.g. AdminService/EvictLease (logs and audit records)."""
    return method.rsplit(".", 1)[-1]

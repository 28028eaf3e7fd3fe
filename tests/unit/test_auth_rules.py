"""The authorization table covers every RPC vgpud serves, and every servicer method goes through the gate."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from vgpu.api.v1 import admin_pb2, jobs_pb2, workload_pb2
from vgpud._private.auth.identity import Role
from vgpud._private.auth.rules import RULES, rule_for, short
from vgpud._private.jobs.service import JobService
from vgpud._private.services import reflection as reflection_v1
from vgpud._private.services.admin import AdminService
from vgpud._private.services.workload import WorkloadService

SERVED: tuple[Any, ...] = (
    workload_pb2.DESCRIPTOR,
    admin_pb2.DESCRIPTOR,
    jobs_pb2.DESCRIPTOR,
    health_pb2.DESCRIPTOR,
    reflection_pb2.DESCRIPTOR,
    reflection_v1.DESCRIPTOR,
)
"""Every proto file whose services vgpud registers (grpc_server.py)."""


def served_methods() -> list[str]:
    return [
        f"{service.full_name}/{method.name}"
        for file in SERVED
        for service in file.services_by_name.values()
        for method in service.methods
    ]


def test_every_served_method_has_a_rule_and_the_table_has_no_stale_entry() -> None:
    methods = served_methods()
    missing = [m for m in methods if rule_for(m) is None]
    assert not missing, f"methods without an authorization rule (nobody could call them): {missing}"
    assert set(RULES) == set(methods), f"rules for methods nobody serves: {set(RULES) - set(methods)}"


@pytest.mark.parametrize("servicer", [WorkloadService, AdminService, JobService])
def test_every_servicer_method_is_guarded_under_its_own_name(
    servicer: type[WorkloadService | AdminService | JobService],
) -> None:
    service = servicer.service_name.rsplit(".", 1)[-1]
    module = {"WorkloadService": workload_pb2, "AdminService": admin_pb2, "JobService": jobs_pb2}[service]
    descriptor = module.DESCRIPTOR.services_by_name[service]
    for method in descriptor.methods:
        handler = inspect.getattr_static(servicer, method.name)
        assert getattr(handler, "vgpu_guarded", None) == method.name, f"{service}/{method.name} bypasses the gate"


def test_admin_mutations_are_admin_only_and_audited() -> None:
    mutations = ("EvictLease", "SetGpuMode", "DrainNode", "SetQuota", "DeleteQuota", "PreemptLease")
    for name in mutations:
        rule = RULES[f"vgpu.api.v1.AdminService/{name}"]
        assert rule.roles == {Role.ADMIN}, name
        assert rule.mutation, name
    assert RULES["vgpu.api.v1.AdminService/ListAudit"].roles == {Role.ADMIN}
    assert RULES["vgpu.api.v1.AdminService/PlanMigLayout"].roles == {Role.ADMIN}


def test_reads_are_open_to_every_role_and_lease_calls_to_people() -> None:
    for name in ("ListNodes", "ListGpus", "ListAllLeases", "GetQuota", "ListQuotas", "ListQueue", "ListLeaseUsage"):
        assert RULES[f"vgpu.api.v1.AdminService/{name}"].roles == set(Role), name
    for name in ("Acquire", "Release", "Heartbeat", "GetLease", "WatchLease", "AckPreempt"):
        assert RULES[f"vgpu.api.v1.WorkloadService/{name}"].roles == {Role.USER, Role.ADMIN}, name
    open_methods = {m for m, r in RULES.items() if r.open}
    assert open_methods == {
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.health.v1.Health/List",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }


def test_jobs_are_for_people_and_their_relay_for_nodes_only() -> None:
    assert RULES["vgpu.api.v1.JobService/RunJob"].roles == {Role.USER, Role.ADMIN}
    assert RULES["vgpu.api.v1.JobService/RunOnNode"].roles == {Role.NODE}


def test_short_names() -> None:
    assert short("vgpu.api.v1.AdminService/EvictLease") == "AdminService/EvictLease"

"""Bad input at the wire: the right status code, an ErrorInfo reason, a message that says what to do,
and a daemon that keeps serving afterwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from tests.integration.conftest import Admin, GiB
from vgpu.api.v1 import admin_pb2, types_pb2, workload_pb2
from vgpu.testing import LocalPool


def reason_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # a failed call's RpcError is also a grpc.Call
    assert status is not None, "every error carries google.rpc.Status details"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "vgpu.dev"
    reason: str = info.reason
    return reason


def acquire_error(admin: Admin, **resources: Any) -> grpc.RpcError:
    request = workload_pb2.AcquireRequest(resources=types_pb2.ResourceRequest(**resources))
    with pytest.raises(grpc.RpcError) as info:
        list(admin.workload.Acquire(request, timeout=10))
    return info.value


@pytest.mark.parametrize(
    ("resources", "code", "reason", "needle"),
    [
        ({"compute_milli": 100}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "memory is required"),
        (
            {"memory_bytes": GiB, "compute_milli": 5000},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "1..1000",
        ),
        (
            {"memory_bytes": 2**64 - 1, "compute_milli": 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "larger",
        ),
        (
            {"memory_bytes": GiB, "compute_milli": 1, "gpu_models": ["z100"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_GPU_MODEL",
            "known models",
        ),
        ({"mig_profile": "3g.40gb"}, grpc.StatusCode.FAILED_PRECONDITION, "NEVER_FITS", "vgpuctl gpu mode"),
        ({"mig_profile": "3g.41gb"}, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_MIG_PROFILE", "3g.40gb"),
        ({"mig_profile": "3g.20gb"}, grpc.StatusCode.FAILED_PRECONDITION, "NEVER_FITS", "h100-80gb: 1g.10gb"),
        (
            {"memory_bytes": 200 * GiB, "compute_milli": 1},
            grpc.StatusCode.FAILED_PRECONDITION,
            "NEVER_FITS",
            "largest shared GPU",
        ),
        (
            {"memory_bytes": GiB, "compute_milli": 1, "node": "no-such-node"},
            grpc.StatusCode.NOT_FOUND,
            "NODE_NOT_FOUND",
            "no-such-node",
        ),
    ],
)
def test_bad_acquires(
    admin: Admin, resources: dict[str, object], code: grpc.StatusCode, reason: str, needle: str
) -> None:
    error = acquire_error(admin, **resources)
    assert error.code() == code
    assert reason_of(error) == reason
    assert needle in (error.details() or "")
    assert admin.allocated_memory() == 0


def test_oversized_strings_are_refused(admin: Admin) -> None:
    request = workload_pb2.AcquireRequest(
        resources=types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli=1),
        owner=types_pb2.Owner(user="u" * 100_000),
    )
    with pytest.raises(grpc.RpcError) as info:
        list(admin.workload.Acquire(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_and_foreign_lease_ids(daemon: LocalPool, admin: Admin) -> None:
    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1)
        cases = [
            (workload_pb2.ReleaseRequest(lease_id="../../etc", token="x"), grpc.StatusCode.INVALID_ARGUMENT),
            (
                workload_pb2.ReleaseRequest(lease_id="lease-ffffffffffff", token="x"),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                workload_pb2.ReleaseRequest(lease_id=lease.id, token=lease.id + ".forged"),
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            (workload_pb2.ReleaseRequest(lease_id=lease.id, token=""), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for request, code in cases:
            with pytest.raises(grpc.RpcError) as info:
                admin.workload.Release(request, timeout=10)
            assert info.value.code() == code, request
        with pytest.raises(grpc.RpcError) as info:
            admin.workload.Heartbeat(workload_pb2.HeartbeatRequest(lease_id=lease.id, token="nope"), timeout=10)
        assert reason_of(info.value) == "LEASE_TOKEN_MISMATCH"
        lease.refresh()
        assert lease.status == "granted"


def test_admin_input_is_checked(admin: Admin) -> None:
    checks: list[tuple[Callable[[], object], str]] = [
        (
            lambda: admin.admin.SetGpuMode(
                admin_pb2.SetGpuModeRequest(gpu_uuid="GPU-nope", mode=types_pb2.GPU_MODE_SHARED), timeout=10
            ),
            "GPU_NOT_FOUND",
        ),
        (
            lambda: admin.admin.SetGpuMode(
                admin_pb2.SetGpuModeRequest(gpu_uuid=admin.gpus()[0].uuid, mode=types_pb2.GPU_MODE_UNSPECIFIED),
                timeout=10,
            ),
            "INVALID_REQUEST",
        ),
        (
            lambda: admin.admin.DrainNode(admin_pb2.DrainNodeRequest(node="ghost"), timeout=10),
            "NODE_NOT_FOUND",
        ),
        (
            lambda: admin.admin.DrainNode(admin_pb2.DrainNodeRequest(node="bad name!"), timeout=10),
            "INVALID_REQUEST",
        ),
        (
            lambda: admin.admin.EvictLease(admin_pb2.EvictLeaseRequest(lease_id="lease-ffffffffffff"), timeout=10),
            "LEASE_NOT_FOUND",
        ),
    ]
    for call, reason in checks:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert reason_of(info.value) == reason


def test_daemon_still_serves_after_bad_input(daemon: LocalPool, admin: Admin) -> None:
    for _ in range(3):
        acquire_error(admin, memory_bytes=0, compute_milli=0)
    # A typed channel call: the grpc_health stubs give HealthStub no Check method.
    check = admin.channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    assert check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    with daemon.pool() as pool:
        assert pool.acquire(memory="1GiB", compute=0.1).status == "granted"

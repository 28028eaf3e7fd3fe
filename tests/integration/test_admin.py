"""The admin door against a real daemon: vgpuctl verbs, modes and draining."""

from __future__ import annotations

import json

import pytest

import vgpu
from tests.integration.conftest import GiB, vgpuctl
from vgpu.testing import LocalPool


def test_vgpuctl_reads_the_pool(daemon: LocalPool) -> None:
    with daemon.pool() as pool:
        lease = pool.acquire(memory="20GiB", compute=0.5, project="vision")
        nodes = json.loads(vgpuctl(daemon, "nodes", "--json", check=True).stdout)
        assert [n["name"] for n in nodes] == [daemon.node_name]
        assert nodes[0]["state"] == "NODE_STATE_READY"
        gpus = json.loads(vgpuctl(daemon, "gpus", "--json", check=True).stdout)
        assert len(gpus) == 2
        assert {g["model"] for g in gpus} == {"h100-80gb"}
        used = [g for g in gpus if int(g["allocated"]["memory_bytes"])]
        assert [g["uuid"] for g in used] == [lease.slices[0].gpu_uuid]
        table = vgpuctl(daemon, "leases", check=True).stdout
        assert lease.id in table
        assert "vision" in table
        assert "20GiB/0.5" in table


def test_gpu_mode_is_refused_while_busy_then_switches(daemon: LocalPool) -> None:
    with daemon.pool() as pool:
        lease = pool.acquire(memory="20GiB", compute=0.5)
        uuid = lease.slices[0].gpu_uuid
        busy = vgpuctl(daemon, "gpu", "mode", uuid, "exclusive")
        assert busy.returncode == 1
        assert "GPU_BUSY" in busy.stderr
        assert lease.id in busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1
        lease.release()
        vgpuctl(daemon, "gpu", "mode", uuid, "exclusive", check=True)
        whole = pool.acquire(gpus=1, wait=False)
        assert whole.slices[0].gpu_uuid == uuid
        assert whole.slices[0].memory_bytes > 79 * GiB
        shared = pool.acquire(memory="1GiB", compute=0.1, wait=False)
        assert shared.slices[0].gpu_uuid != uuid
        mig = vgpuctl(daemon, "gpu", "mode", shared.slices[0].gpu_uuid, "mig")
        assert mig.returncode == 1


def test_drain_stops_new_work_and_undo_restores_it(daemon: LocalPool) -> None:
    with daemon.pool() as pool:
        kept = pool.acquire(memory="1GiB", compute=0.1)
        out = vgpuctl(daemon, "drain", daemon.node_name, check=True)
        assert "draining" in out.stdout
        with pytest.raises(vgpu.NodeDrainingError):
            pool.acquire(memory="1GiB", compute=0.1, wait=False)
        kept.refresh()
        assert kept.state == "granted"
        vgpuctl(daemon, "drain", daemon.node_name, "--undo", check=True)
        assert pool.acquire(memory="1GiB", compute=0.1, wait=False).state == "granted"


def test_evict_via_vgpuctl_marks_the_client_lease_lost(daemon: LocalPool) -> None:
    import threading

    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1, ttl=3)
        lost = threading.Event()
        lease.on_lost = lambda _reason: lost.set()
        out = vgpuctl(daemon, "evict", lease.id, "--reason", "node maintenance", check=True)
        assert lease.id in out.stdout
        assert lost.wait(15), "the heartbeat thread notices the eviction within a heartbeat"
        assert lease.lost
        assert "node maintenance" in (lease.lost_reason or "")


def test_health_and_reflection_are_served(daemon: LocalPool) -> None:
    import grpc
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(daemon.endpoint) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        for service in ("", "vgpu.api.v1.WorkloadService", "vgpu.api.v1.AdminService"):
            answer = check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in response.list_services_response.service}
        assert {"vgpu.api.v1.WorkloadService", "vgpu.api.v1.AdminService", "grpc.health.v1.Health"} <= names

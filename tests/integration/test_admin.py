"""The admin door against a real daemon: vgpuctl verbs, modes and draining."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import vgpu
from tests.integration.conftest import GiB, vgpuctl, wait_until
from tests.support import SharedEtcd
from vgpu._private.channels import authenticated_channel
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from vgpu.testing import LocalPool, local_pool

NODE_DOWN_WAIT = 40.0
"""A SIGKILLed daemon's node key expires after its 10 s TTL; the survivor's watch then drops it."""


def test_vgpuctl_reads_the_pool(daemon: LocalPool) -> None:
    daemon.set_quota("vision", deserved=1)
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
        assert kept.status == "granted"
        vgpuctl(daemon, "drain", daemon.node_name, "--undo", check=True)
        assert pool.acquire(memory="1GiB", compute=0.1, wait=False).status == "granted"


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
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with authenticated_channel(daemon.endpoint) as channel:
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


@pytest.fixture
def two_nodes(shared_etcd: SharedEtcd) -> Iterator[tuple[LocalPool, LocalPool]]:
    """Two daemons (two and one simulated GPUs), each its own node, sharing one etcd."""
    args = shared_etcd.args
    with local_pool("h100-80gb:2", extra_args=args) as first, local_pool("h100-80gb:1", extra_args=args) as second:
        yield first, second


def list_nodes(daemon: LocalPool) -> dict[str, types_pb2.Node]:
    with authenticated_channel(daemon.endpoint) as channel:
        answer = admin_pb2_grpc.AdminServiceStub(channel).ListNodes(admin_pb2.ListNodesRequest(), timeout=10)
    return {node.name: node for node in answer.nodes}


def list_gpus(daemon: LocalPool) -> list[types_pb2.Gpu]:
    with authenticated_channel(daemon.endpoint) as channel:
        return list(admin_pb2_grpc.AdminServiceStub(channel).ListGpus(admin_pb2.ListGpusRequest(), timeout=10).gpus)


def list_leases(daemon: LocalPool) -> list[types_pb2.Lease]:
    with authenticated_channel(daemon.endpoint) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return list(stub.ListAllLeases(admin_pb2.ListAllLeasesRequest(), timeout=10).leases)


def test_a_killed_node_is_listed_down_with_its_gpus(two_nodes: tuple[LocalPool, LocalPool]) -> None:
    survivor, victim = two_nodes
    vgpuctl(survivor, "drain", survivor.node_name, check=True)
    nodes = wait_until(lambda: listed if len(listed := list_nodes(survivor)) == 2 else None, what="both nodes")
    assert nodes[survivor.node_name].state == types_pb2.NODE_STATE_DRAINING
    assert nodes[victim.node_name].state == types_pb2.NODE_STATE_READY
    assert (nodes[survivor.node_name].gpu_count, nodes[victim.node_name].gpu_count) == (2, 1)
    assert all(gpu.healthy for gpu in list_gpus(survivor))
    victim.kill()

    def victim_down() -> dict[str, types_pb2.Node] | None:
        listed = list_nodes(survivor)
        return listed if listed[victim.node_name].state == types_pb2.NODE_STATE_DOWN else None

    nodes = wait_until(victim_down, timeout=NODE_DOWN_WAIT, what=f"{victim.node_name} listed DOWN")
    down = nodes[victim.node_name]
    assert down.gpu_count == 1
    assert (down.endpoint, down.version, down.started_at.seconds) == ("", "", 0)
    assert nodes[survivor.node_name].state == types_pb2.NODE_STATE_DRAINING
    health = {gpu.node: gpu.healthy for gpu in list_gpus(survivor)}
    assert health == {survivor.node_name: True, victim.node_name: False}
    table = {row.split()[0]: row.split() for row in vgpuctl(survivor, "nodes", check=True).stdout.splitlines()}
    assert table[victim.node_name][1:3] == ["down", "1"]
    assert table[survivor.node_name][1:3] == ["draining", "2"]
    as_json = {n["name"]: n for n in json.loads(vgpuctl(survivor, "nodes", "--json", check=True).stdout)}
    assert as_json[victim.node_name]["state"] == "NODE_STATE_DOWN"
    gpus = [row.split() for row in vgpuctl(survivor, "gpus", check=True).stdout.splitlines()[1:]]
    assert {(row[0], row[-1]) for row in gpus} == {(survivor.node_name, "ok"), (victim.node_name, "node-down")}


def test_another_node_lists_a_lease_with_its_slices_node_environment(two_nodes: tuple[LocalPool, LocalPool]) -> None:
    granting, other = two_nodes
    with granting.pool() as pool, pool.acquire(memory="20GiB", compute=0.5) as lease:
        uuid = lease.slices[0].gpu_uuid
        assert lease.nodes == (granting.node_name,)
        own = lease.environment(granting.node_name)
        assert own["CUDA_VISIBLE_DEVICES"] == uuid
        assert own["VGPU_LEASE"] == lease.token
        assert lease.environment() == lease.env
        with pytest.raises(vgpu.InvalidRequestError, match=granting.node_name):
            lease.environment(other.node_name)

        def listed() -> types_pb2.Lease | None:
            return next((m for m in list_leases(other) if m.id == lease.id), None)

        msg = wait_until(listed, what="the lease in the other daemon's view")
        assert [entry.node for entry in msg.node_environments] == [granting.node_name]
        remote = dict(msg.node_environments[0].env)
        assert remote["CUDA_VISIBLE_DEVICES"] == uuid
        assert remote["VGPU_ENDPOINT"] == granting.endpoint  # where clients on the slice's node dial
        assert remote["VGPU_MEMORY_LIMIT"] == str(20 * GiB)
        assert "VGPU_LEASE" not in remote
        assert dict(msg.env) == remote  # the answering daemon holds no slice: the slices' node
        rows = [row.split() for row in vgpuctl(other, "leases", check=True).stdout.splitlines()]
        assert rows[0][-1] == "NODES"
        assert rows[1][0] == lease.id
        assert rows[1][-1] == granting.node_name

"""The admin's small things against a real daemon: Health/List, reflection v1 and v1alpha, evicting an ended
lease, int64 in --json, one spelling of the default project, GPUs named NODE:INDEX."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import vgpu
from tests.integration.conftest import Admin, GiB, vgpuctl
from vgpu._private.channels import authenticated_channel
from vgpu.api.v1 import admin_pb2
from vgpu.testing import LocalPool
from vgpud._private.services import reflection as reflection_v1

BUF = Path(sys.executable).parent / "buf"
SERVED = {"vgpu.api.v1.WorkloadService", "vgpu.api.v1.AdminService", "vgpu.api.v1.JobService"}


def message_class(full_name: str) -> Any:
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))


def test_health_list_answers_the_status_of_every_served_service(daemon: LocalPool) -> None:
    request, response = (
        message_class("grpc.health.v1.HealthListRequest"),
        message_class("grpc.health.v1.HealthListResponse"),
    )
    with authenticated_channel(daemon.endpoint) as channel:
        health_list: grpc.UnaryUnaryMultiCallable[Any, Any] = channel.unary_unary(
            "/grpc.health.v1.Health/List",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response().FromString,
        )
        answer = health_list(request(), timeout=5)
    statuses = {name: status.status for name, status in answer.statuses.items()}
    assert statuses == dict.fromkeys({"", *SERVED}, health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_as_v1_and_as_v1alpha(daemon: LocalPool, version: str) -> None:
    file = reflection_v1.DESCRIPTOR if version == "v1" else reflection_pb2.DESCRIPTOR
    request: Any = message_factory.GetMessageClass(file.message_types_by_name["ServerReflectionRequest"])
    response: Any = message_factory.GetMessageClass(file.message_types_by_name["ServerReflectionResponse"])
    asked = [
        request(list_services=""),
        request(file_containing_symbol="vgpu.api.v1.AdminService"),
        request(file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"),
    ]
    with authenticated_channel(daemon.endpoint) as channel:
        info: grpc.StreamStreamMultiCallable[Any, Any] = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response.FromString,
        )
        listed, admin, own = list(info(iter(asked), timeout=10))
    names = {service.name for service in listed.list_services_response.service}
    assert names == {
        *SERVED,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in admin.file_descriptor_response.file_descriptor_proto
    ]
    assert any(f.package == "vgpu.api.v1" and "AdminService" in {s.name for s in f.service} for f in files)
    (reflected,) = (
        descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in own.file_descriptor_response.file_descriptor_proto
    )
    assert reflected.package == f"grpc.reflection.{version}"
    assert own.original_request == asked[2]


@pytest.mark.skipif(not BUF.exists(), reason="buf (the buf-bin dev dependency) is not installed")
def test_buf_curl_finds_the_api_over_either_reflection_and_calls_health_list(daemon: LocalPool) -> None:
    base = [str(BUF), "curl", "--unix-socket", str(daemon.socket_path), "--protocol", "grpc", "--http2-prior-knowledge"]
    for protocol in ("grpc-v1", "grpc-v1alpha"):
        listed = subprocess.run(
            [*base, "--reflect-protocol", protocol, "--list-methods", "http://vgpud"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
        methods = set(listed.stdout.split())
        assert {"vgpu.api.v1.AdminService/EvictLease", "grpc.health.v1.Health/List"} <= methods, protocol
    called = subprocess.run(
        [*base, "--reflect-protocol", "grpc-v1", "http://vgpud/grpc.health.v1.Health/List"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["statuses"][""] == {"status": "SERVING"}


def test_evicting_an_ended_lease_is_refused_naming_how_it_ended(daemon: LocalPool, admin: Admin) -> None:
    with daemon.pool() as pool:
        released = pool.acquire(memory="1GiB", compute=0.1)
        released.release()
        evicted = pool.acquire(memory="1GiB", compute=0.1)
        vgpuctl(daemon, "evict", evicted.id, "--reason", "maintenance", check=True)
        again = vgpuctl(daemon, "evict", evicted.id, "--reason", "twice")
        assert (again.returncode, again.stdout) == (1, "")
        assert again.stderr.splitlines() == [
            f"vgpuctl: error: LEASE_ENDED: lease {evicted.id} had already ended: revoked "
            "(EVICTED_BY_ADMIN: maintenance); nothing was changed"
        ]
        gone = vgpuctl(daemon, "evict", released.id)
        assert gone.returncode == 1
        assert f"LEASE_ENDED: lease {released.id} had already ended: released (RELEASED_BY_CLIENT" in gone.stderr
        with pytest.raises(grpc.RpcError) as caught:  # every client of the API gets the refusal, not only vgpuctl
            admin.admin.EvictLease(admin_pb2.EvictLeaseRequest(lease_id=released.id), timeout=10)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        leases = {
            lease.id: lease
            for lease in admin.admin.ListAllLeases(
                admin_pb2.ListAllLeasesRequest(include_ended=True), timeout=10
            ).leases
        }
        assert leases[evicted.id].end_message == "maintenance"  # the first eviction's reason is kept


def test_json_has_64_bit_integers_as_numbers(daemon: LocalPool) -> None:
    with daemon.pool() as pool, pool.acquire(memory="20GiB", compute=0.5):
        gpus = json.loads(vgpuctl(daemon, "gpus", "--json", check=True).stdout)
        leases = json.loads(vgpuctl(daemon, "leases", "--json", check=True).stdout)
    assert all(type(gpu["memory_bytes"]) is int and gpu["memory_bytes"] > 79 * GiB for gpu in gpus)
    assert sorted(gpu["allocated"]["memory_bytes"] for gpu in gpus) == [0, 20 * GiB]
    assert leases[0]["slices"][0]["memory_bytes"] == 20 * GiB


def test_the_default_project_reads_default_in_leases_and_queue(daemon: LocalPool) -> None:
    with daemon.pool() as pool:
        held = [pool.acquire(memory="70GiB", compute=0.9) for _ in range(2)]  # no project: the default one
        queued = threading.Event()
        waiter = threading.Thread(
            target=lambda: pool.acquire(memory="20GiB", compute=0.5, timeout=30, on_queued=lambda _: queued.set())
        )
        waiter.start()
        try:
            assert queued.wait(15), "the third request waits"
            leases = [row.split() for row in vgpuctl(daemon, "leases", check=True).stdout.splitlines()[1:]]
            assert {(row[0], row[2]) for row in leases} == {(lease.id, "default") for lease in held}
            queue = [row.split() for row in vgpuctl(daemon, "queue", check=True).stdout.splitlines()[1:2]]
            assert queue[0][2] == "default"
            named = vgpuctl(daemon, "leases", "--project", "default", "--json", check=True).stdout
            assert {lease["id"] for lease in json.loads(named)} == {lease.id for lease in held}
        finally:
            held[0].release()  # the waiter fits now
            waiter.join(30)


def test_a_gpu_is_named_by_node_and_index(daemon: LocalPool) -> None:
    gpus = {gpu["index"]: gpu["uuid"] for gpu in json.loads(vgpuctl(daemon, "gpus", "--json", check=True).stdout)}
    switched = vgpuctl(daemon, "gpu", "mode", f"{daemon.node_name}:1", "exclusive", check=True)
    assert switched.stdout.startswith(f"GPU {gpus[1]} (node {daemon.node_name}, index 1): mode exclusive")
    modes = {gpu["uuid"]: gpu["mode"] for gpu in json.loads(vgpuctl(daemon, "gpus", "--json", check=True).stdout)}
    assert modes == {gpus[0]: "GPU_MODE_SHARED", gpus[1]: "GPU_MODE_EXCLUSIVE"}
    no_index = vgpuctl(daemon, "gpu", "mode", f"{daemon.node_name}:7", "shared")
    assert no_index.returncode == 3
    assert no_index.stderr.splitlines() == [
        f"vgpuctl: error: GPU_NOT_FOUND: node {daemon.node_name} has no GPU 7 (its GPUs: 0, 1); "
        f"see `vgpuctl gpus --node {daemon.node_name}`"
    ]
    no_node = vgpuctl(daemon, "gpu", "mode", "nowhere:0", "shared")
    assert no_node.returncode == 3
    assert len(no_node.stderr.splitlines()) == 1
    assert "no node 'nowhere' in the pool" in no_node.stderr
    layout = daemon.state_dir / "layout.toml"
    layout.write_text(f'[gpus."{daemon.node_name}:0"]\nprofiles = ["7g.80gb"]\n')
    steps = json.loads(vgpuctl(daemon, "mig", "plan", str(layout), "--json", check=True).stdout)
    assert [(step["gpu_uuid"], step["profile"]) for step in steps] == [(gpus[0], "7g.80gb")]


def test_versions_agree(daemon: LocalPool) -> None:
    nodes = json.loads(vgpuctl(daemon, "nodes", "--json", check=True).stdout)
    assert [node["version"] for node in nodes] == [vgpu.__version__]
    assert vgpuctl(daemon, "--version", check=True).stdout == f"vgpuctl {vgpu.__version__}\n"

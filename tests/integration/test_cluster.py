"""Cluster mode: several daemons on one etcd act as one pool (cross-node placement, leader, node loss)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from tests.integration.conftest import Admin, wait_until
from tests.support import SharedEtcd
from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2, types_pb2, workload_pb2
from vgpu.testing import LocalPool, local_pool
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.registry import Keys
from vgpud._private.store.embedded_etcd import EmbeddedEtcd

WHOLE = types_pb2.ISOLATION_WHOLE


@pytest.fixture
def two_nodes(shared_etcd: SharedEtcd) -> Iterator[tuple[LocalPool, LocalPool]]:
    """Nodes a and b, two simulated H100s each, on one etcd."""
    args = shared_etcd.args
    with local_pool("h100-80gb:2", extra_args=args, ttl=5) as a, local_pool("h100-80gb:2", extra_args=args, ttl=5) as b:
        yield a, b


def acquire(
    daemon: LocalPool, resources: types_pb2.ResourceRequest, *, wait: bool = False, timeout: float = 20
) -> workload_pb2.AcquireResponse:
    """The last answer of an Acquire stream (raw stub, to see status codes and fields)."""
    admin = Admin(daemon.endpoint)
    try:
        request = workload_pb2.AcquireRequest(resources=resources, wait=wait)
        answers = list(admin.workload.Acquire(request, timeout=timeout))
        return answers[-1]
    finally:
        admin.close()


def refusal(daemon: LocalPool, resources: types_pb2.ResourceRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        acquire(daemon, resources)
    error = cast("grpc.Call", caught.value)  # every RpcError of a call is also a Call
    return error.code(), error.details() or ""


def leader_of(etcd: SharedEtcd) -> str | None:
    raw = asyncio.run(etcd.read(Keys("default").leader))
    return raw.decode() if raw else None


def test_a_request_for_another_node_is_placed_there(two_nodes: tuple[LocalPool, LocalPool]) -> None:
    a, b = two_nodes
    answer = acquire(a, types_pb2.ResourceRequest(isolation=WHOLE, count=2, node=b.node_name))
    assert [s.node for s in answer.lease.slices] == [b.node_name, b.node_name]
    (env,) = answer.lease.node_environments
    assert env.node == b.node_name
    assert env.env["CUDA_VISIBLE_DEVICES"] == ",".join(s.gpu_uuid for s in answer.lease.slices)


def release(daemon: LocalPool, answer: workload_pb2.AcquireResponse) -> None:
    admin = Admin(daemon.endpoint)
    try:
        request = workload_pb2.ReleaseRequest(lease_id=answer.lease.id, token=answer.lease.token)
        admin.workload.Release(request, timeout=10)
    finally:
        admin.close()


def test_any_node_requests_keep_to_one_node_and_a_gang_spans_nodes(two_nodes: tuple[LocalPool, LocalPool]) -> None:
    a, b = two_nodes
    first = acquire(a, types_pb2.ResourceRequest(isolation=WHOLE, count=2, any_node=True))
    second = acquire(a, types_pb2.ResourceRequest(isolation=WHOLE, count=2, any_node=True))
    assert len({s.node for s in first.lease.slices}) == 1
    assert len({s.node for s in second.lease.slices}) == 1
    assert {s.node for s in first.lease.slices} != {s.node for s in second.lease.slices}
    code, details = refusal(a, types_pb2.ResourceRequest(isolation=WHOLE, any_node=True))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    release(a, first)
    release(a, second)
    gang = acquire(b, types_pb2.ResourceRequest(isolation=WHOLE, count=4, any_node=True, gang=True))
    assert sorted({s.node for s in gang.lease.slices}) == sorted([a.node_name, b.node_name])
    assert len({s.gpu_uuid for s in gang.lease.slices}) == 4
    assert {e.node for e in gang.lease.node_environments} == {a.node_name, b.node_name}


def test_bad_placement_requests_get_clear_errors(
    two_nodes: tuple[LocalPool, LocalPool], shared_etcd: SharedEtcd
) -> None:
    a, b = two_nodes
    code, details = refusal(a, types_pb2.ResourceRequest(isolation=WHOLE, node=b.node_name, any_node=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "conflict" in details
    code, details = refusal(a, types_pb2.ResourceRequest(isolation=WHOLE, node="no-such-node"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "no-such-node" in details
    code, details = refusal(a, types_pb2.ResourceRequest(isolation=WHOLE, count=5, any_node=True, gang=True))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "whole pool" in details
    code, details = refusal(a, types_pb2.ResourceRequest(isolation=WHOLE, count=3, any_node=True))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "gang" in details
    subprocess.run(
        [sys.executable, "-m", "vgpuctl", "--endpoint", a.endpoint, "drain", b.node_name], check=True, timeout=60
    )
    code, details = refusal(a, types_pb2.ResourceRequest(isolation=WHOLE, node=b.node_name))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "draining" in details


def test_a_lost_node_is_shown_down_and_its_leases_are_revoked(two_nodes: tuple[LocalPool, LocalPool]) -> None:
    a, b = two_nodes
    answer = acquire(a, types_pb2.ResourceRequest(isolation=WHOLE, node=b.node_name))
    lease_id, token = answer.lease.id, answer.lease.token
    admin = Admin(a.endpoint)
    try:
        b.kill()

        def revoked() -> LeaseRecord | None:
            # The client keeps heartbeating through a, so only the node's loss can end the lease.
            with contextlib.suppress(grpc.RpcError):
                admin.workload.Heartbeat(workload_pb2.HeartbeatRequest(lease_id=lease_id, token=token), timeout=5)
            got = admin.workload.GetLease(workload_pb2.GetLeaseRequest(lease_id=lease_id, token=token), timeout=5)
            return got if got.lease.state == types_pb2.LEASE_STATE_REVOKED else None  # type: ignore[return-value]  # a message stands in for the record

        got = wait_until(revoked, timeout=40, what="the lost node's lease to be revoked")
        assert got.lease.end_reason == reasons.END_NODE_LOST  # type: ignore[attr-defined]  # GetLeaseResponse
        code, details = refusal(a, types_pb2.ResourceRequest(isolation=WHOLE, node=b.node_name))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "down" in details
        gpus = [g for g in admin.gpus() if g.node == b.node_name]
        assert gpus
        assert all(g.allocated.memory_bytes == 0 for g in gpus)
    finally:
        admin.close()


def test_leadership_fails_over_and_the_queue_goes_on(
    two_nodes: tuple[LocalPool, LocalPool], shared_etcd: SharedEtcd
) -> None:
    a, b = two_nodes
    leader = wait_until(lambda: leader_of(shared_etcd), what="a leader")
    first, second = (a, b) if leader == a.node_name else (b, a)
    held = acquire(second, types_pb2.ResourceRequest(isolation=WHOLE, count=2))
    first.kill()
    admin = Admin(second.endpoint)
    beat = workload_pb2.HeartbeatRequest(lease_id=held.lease.id, token=held.lease.token)

    def survivor_leads() -> bool:
        admin.workload.Heartbeat(beat, timeout=10)  # the held lease (TTL 5 s) must outlive the failover
        return leader_of(shared_etcd) == second.node_name

    try:
        wait_until(survivor_leads, timeout=30, what="the survivor to lead")
        request = workload_pb2.AcquireRequest(resources=types_pb2.ResourceRequest(isolation=WHOLE), wait=True)
        stream = admin.workload.Acquire(request, timeout=30)
        queued = next(stream)
        assert queued.WhichOneof("update") == "queued"
        admin.workload.Release(workload_pb2.ReleaseRequest(lease_id=held.lease.id, token=held.lease.token), timeout=10)
        granted = [r for r in stream if r.WhichOneof("update") == "lease"]
        assert len(granted) == 1
        assert granted[0].lease.slices[0].node == second.node_name
    finally:
        admin.close()


def test_a_daemon_refuses_an_etcd_of_another_pool(shared_etcd: SharedEtcd) -> None:
    with local_pool("h100-80gb:1", extra_args=(*shared_etcd.args, "--cluster", "blue")):
        pass
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vgpud",
            "--sim",
            "h100-80gb:1",
            *shared_etcd.args,
            "--cluster",
            "green",
            "--state-dir",
            "/tmp/vgpu-refuse-" + str(os.getpid()),
            "--socket",
            f"/tmp/vgpu-refuse-{os.getpid()}.sock",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "another pool" in result.stderr
    assert "--cluster blue" in result.stderr


def test_a_partitioned_daemon_keeps_leases_until_its_own_lease_would_lapse(tmp_path: Path) -> None:
    etcd = EmbeddedEtcd(tmp_path / "etcd")
    etcd.start()
    try:
        with local_pool("h100-80gb:1", extra_args=SharedEtcd.of(etcd).args, ttl=30) as daemon:
            answer = acquire(daemon, types_pb2.ResourceRequest(memory_bytes=1 << 30, compute_milli=100))
            beat = workload_pb2.HeartbeatRequest(lease_id=answer.lease.id, token=answer.lease.token)
            admin = Admin(daemon.endpoint)
            assert etcd.pid is not None
            try:
                admin.workload.Heartbeat(beat, timeout=10)
                os.kill(etcd.pid, signal.SIGSTOP)  # etcd stops answering: this daemon is cut off
                try:
                    assert admin.workload.Heartbeat(beat, timeout=10).state == types_pb2.LEASE_STATE_GRANTED

                    def told() -> str | None:
                        try:
                            admin.workload.Heartbeat(beat, timeout=10)
                        except grpc.RpcError as exc:
                            call = cast("grpc.Call", exc)  # every RpcError of a unary call is also a Call
                            if call.code() == grpc.StatusCode.FAILED_PRECONDITION:
                                return call.details()
                        return None

                    details = wait_until(told, timeout=40, what="the client to be told its lease is lost")
                    assert "NODE_LOST" in details
                finally:
                    os.kill(etcd.pid, signal.SIGCONT)
            finally:
                admin.close()
    finally:
        etcd.stop()


async def queue_keys(etcd: SharedEtcd) -> list[str]:
    store = await etcd.connect()
    try:
        snapshot = await store.get_prefix(Keys("default").queue(""), timeout=5)
        return [kv.key for kv in snapshot.kvs]
    finally:
        await store.close()


def test_a_waiter_that_gives_up_while_etcd_is_unreachable_still_leaves_the_queue(tmp_path: Path) -> None:
    """A queue key left behind would be granted later to nobody (seen in the fault-injection suite)."""
    etcd = EmbeddedEtcd(tmp_path / "etcd")
    etcd.start()
    try:
        with local_pool("h100-80gb:1", extra_args=SharedEtcd.of(etcd).args, ttl=30) as daemon:
            held = acquire(daemon, types_pb2.ResourceRequest(isolation=WHOLE))
            admin = Admin(daemon.endpoint)
            assert etcd.pid is not None
            try:
                request = workload_pb2.AcquireRequest(resources=types_pb2.ResourceRequest(isolation=WHOLE), wait=True)
                stream = admin.workload.Acquire(request, timeout=60)
                assert next(stream).WhichOneof("update") == "queued"
                assert len(asyncio.run(queue_keys(SharedEtcd.of(etcd)))) == 1
                os.kill(etcd.pid, signal.SIGSTOP)
                try:
                    stream.cancel()  # the client gives up while its daemon cannot reach etcd
                    wait_until(
                        lambda: "cannot withdraw a queued request yet" in daemon.log_tail(),
                        timeout=30,
                        what="the first withdrawal attempt to fail",
                    )
                finally:
                    os.kill(etcd.pid, signal.SIGCONT)
                target = SharedEtcd.of(etcd)
                wait_until(lambda: not asyncio.run(queue_keys(target)), timeout=30, what="the queue to empty")
                admin.workload.Release(
                    workload_pb2.ReleaseRequest(lease_id=held.lease.id, token=held.lease.token), timeout=10
                )
                listed = admin.admin.ListAllLeases(admin_pb2.ListAllLeasesRequest(include_ended=True), timeout=10)
                assert [lease.id for lease in listed.leases] == [held.lease.id]
            finally:
                admin.close()
    finally:
        etcd.stop()

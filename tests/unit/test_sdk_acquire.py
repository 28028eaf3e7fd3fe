"""Pool.acquire against a real gRPC server with a scripted WorkloadService."""

from __future__ import annotations

import getpass
import os
import socket
import threading
from collections.abc import Iterator

import grpc
import pytest

import vgpu
from tests.unit.test_sdk_support import (
    TOKEN,
    Fail,
    FakeWorkload,
    Hold,
    fake_daemon,
    granted,
    queued,
    serve,
    short_tmp_dir,
)
from vgpu._private import reasons
from vgpu.api.v1 import types_pb2


@pytest.fixture
def daemon() -> Iterator[tuple[FakeWorkload, vgpu.Pool]]:
    with fake_daemon() as (servicer, endpoint, _), vgpu.Pool(endpoint, timeout=5.0) as pool:
        yield servicer, pool


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"memory": "20 parsecs", "compute": 0.5}, "unknown memory unit"),
        ({"memory": "20GiB", "compute": 1.5}, "outside 0.001..1.0"),
        ({"memory": "20GiB", "compute": "half"}, "cannot read compute share"),
        ({"memory": -1, "compute": 0.5}, "memory must be positive"),
        ({"memory": "1GiB", "compute": 0.5, "count": 0}, "count must be"),
        ({"gpus": 1, "memory": "1GiB"}, "gpus= asks for whole GPUs"),
        ({"memory": "1GiB", "compute": 0.5, "isolation": "half"}, "isolation must be"),
        ({"memory": "1GiB", "compute": 0.5, "timeout": -3}, "timeout must be"),
        ({"memory": "1GiB", "compute": 0.5, "ttl": 0}, "ttl must be"),
        ({"memory": "1GiB", "compute": 0.5, "node": 7}, "node must be a node name"),
        ({"memory": "1GiB", "compute": 0.5, "node": "  "}, "node must be a node name"),
        ({"memory": "1GiB", "compute": 0.5, "gang": "yes"}, "gang must be True or False"),
    ],
)
def test_bad_arguments_raise_before_any_rpc(
    daemon: tuple[FakeWorkload, vgpu.Pool], kwargs: dict[str, object], fragment: str
) -> None:
    servicer, pool = daemon
    with pytest.raises(vgpu.InvalidRequestError, match=fragment) as info:
        pool.acquire(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert info.value.reason == reasons.INVALID_REQUEST
    assert servicer.calls == []


def test_acquire_sends_the_request_and_returns_the_lease(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    lease = pool.acquire(
        memory="20GiB",
        compute="50%",
        gpu_model=["h100-80gb", "a100-80gb"],
        project="team-a",
        priority="train",
        ttl=12,
        labels={"job": "bert"},
        description="fine-tune",
    )
    try:
        (call,) = servicer.calls_of("Acquire")
        request = call.request
        assert request.resources.memory_bytes == 20 * 1024**3
        assert request.resources.compute_milli == 500
        assert list(request.resources.gpu_models) == ["h100-80gb", "a100-80gb"]
        assert request.resources.count == 1
        assert request.wait is True
        assert request.ttl.seconds == 12
        assert dict(request.labels) == {"job": "bert"}
        assert (request.project, request.priority) == ("team-a", "train")
        assert request.owner.user == getpass.getuser()
        assert request.owner.host == socket.gethostname()
        assert request.owner.pid == os.getpid()
        assert request.owner.description == "fine-tune"
        assert len(request.request_id) == 32
        assert lease.id == "lease-0123456789ab"
        assert lease.token == TOKEN
        assert lease.status == "granted"
        assert lease.env["VGPU_LEASE"] == TOKEN
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
        lease.env["CUDA_VISIBLE_DEVICES"] = "changed"
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"  # env is a copy
        (slice_,) = lease.slices
        assert slice_ == vgpu.Slice("node-1", "GPU-aaaa", 0, "h100-80gb", "shared", 20 * 1024**3, 500)
        assert lease.ttl == 30
        assert lease.created_at is not None
        assert lease.created_at.year == 2023
    finally:
        lease.release()


def test_whole_gpus_and_mig_shapes(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted()], [granted()]]
    pool.acquire(gpus=2).release()
    pool.acquire(mig="3g.40gb").release()
    whole, mig = (c.request.resources for c in servicer.calls_of("Acquire"))
    assert (whole.isolation, whole.count, whole.memory_bytes) == (types_pb2.ISOLATION_WHOLE, 2, 0)
    assert (mig.isolation, mig.mig_profile) == (types_pb2.ISOLATION_MIG, "3g.40gb")


def test_queue_updates_reach_on_queued_then_the_lease(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[queued(3, 4), queued(2, 4), queued(1, 3), granted()]]
    seen: list[vgpu.QueueInfo] = []
    lease = pool.acquire(memory="1GiB", compute=0.1, on_queued=seen.append)
    lease.release()
    assert [(q.position, q.queue_length) for q in seen] == [(3, 4), (2, 4), (1, 3)]
    assert seen[0].estimated_wait_s == 7.0
    assert seen[0].reason == "waiting for memory"


def test_every_call_carries_a_deadline(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    lease = pool.acquire(memory="1GiB", compute=0.1, timeout=30)
    lease.refresh()
    pool.leases()
    pool.get_lease(lease.id, lease.token)
    servicer.watch_scripts = [[]]
    assert list(lease.events()) == []
    lease.release()
    pool.acquire(memory="1GiB", compute=0.1, wait=False).release()
    methods = {c.method for c in servicer.calls}
    assert methods == {"Acquire", "GetLease", "ListLeases", "WatchLease", "Release"}
    for call in servicer.calls:
        assert call.time_remaining is not None, call.method
    waiting, fail_fast = servicer.calls_of("Acquire")
    assert waiting.time_remaining is not None
    assert 20 < waiting.time_remaining <= 30.5  # deadlines travel with some rounding
    assert fail_fast.time_remaining is not None
    assert fail_fast.time_remaining <= 5.5
    for call in servicer.calls_of("GetLease") + servicer.calls_of("Release"):
        assert call.time_remaining is not None
        assert call.time_remaining <= 5.5


def test_default_queue_wait_is_ten_minutes(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    pool.acquire(memory="1GiB", compute=0.1).release()
    (call,) = servicer.calls_of("Acquire")
    assert call.time_remaining is not None
    assert 590 < call.time_remaining <= 601.5  # the wire format rounds long deadlines up to seconds


def test_retry_after_a_broken_stream_reuses_the_request_id(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [
        [queued(2, 2), Fail(grpc.StatusCode.UNAVAILABLE, message="connection reset")],
        [queued(1, 1), granted()],
    ]
    seen: list[int] = []
    lease = pool.acquire(memory="1GiB", compute=0.1, on_queued=lambda q: seen.append(q.position))
    lease.release()
    first, second = servicer.calls_of("Acquire")
    assert first.request.request_id == second.request.request_id
    assert first.request == second.request
    assert seen == [2, 1]


def test_retry_survives_a_daemon_restart_on_the_same_socket() -> None:
    first = FakeWorkload()
    hold = Hold()
    first.acquire_scripts = [[queued(1, 1), hold]]
    second = FakeWorkload()
    second.acquire_scripts = [[granted()]]
    result: list[vgpu.Lease] = []
    errors: list[BaseException] = []
    with short_tmp_dir() as tmp:
        socket_path = tmp / "vgpud.sock"
        with vgpu.Pool(f"unix://{socket_path}", timeout=5.0) as pool:
            with serve(first, socket_path) as server:

                def run() -> None:
                    try:
                        result.append(pool.acquire(memory="1GiB", compute=0.1, timeout=30))
                    except BaseException as exc:  # noqa: BLE001 -- handed over to the test's thread
                        errors.append(exc)

                worker = threading.Thread(target=run)
                worker.start()
                assert hold.reached.wait(10)
                server.stop(None)  # the connection breaks while the request waits in the queue
            with serve(second, socket_path):
                worker.join(20)
                assert not worker.is_alive()
                assert errors == []
                (lease,) = result
                lease.release()
    (before,) = first.calls_of("Acquire")
    (after,) = second.calls_of("Acquire")
    assert before.request.request_id == after.request.request_id


def test_acquire_reads_the_stream_to_its_end_after_the_lease(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    hold = Hold()
    servicer.acquire_scripts = [[granted(), hold]]
    result: list[vgpu.Lease] = []
    worker = threading.Thread(target=lambda: result.append(pool.acquire(memory="1GiB", compute=0.1)))
    worker.start()
    assert hold.reached.wait(10)
    worker.join(0.3)
    assert worker.is_alive()  # still reading: cancelling now would tell the daemon "not delivered"
    hold.release.set()
    worker.join(10)
    assert hold.left.is_set()
    assert not hold.client_cancelled
    result[0].release()


def test_fail_fast_no_capacity_is_not_retried(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [
        [Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, reasons.NO_CAPACITY, "largest free slice: 10GiB on GPU-a")]
    ]
    with pytest.raises(vgpu.NoCapacityError, match="largest free slice: 10GiB"):
        pool.acquire(memory="20GiB", compute=0.5, wait=False)
    assert len(servicer.calls_of("Acquire")) == 1
    assert servicer.calls_of("Acquire")[0].request.wait is False


def test_shutting_down_is_retried_with_the_same_request(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [
        [Fail(grpc.StatusCode.UNAVAILABLE, reasons.SHUTTING_DOWN, "vgpud is shutting down")],
        [granted()],
    ]
    pool.acquire(memory="1GiB", compute=0.1).release()
    first, second = servicer.calls_of("Acquire")
    assert first.request.request_id == second.request.request_id


def test_client_deadline_while_queued_is_a_queue_timeout(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    hold = Hold()
    servicer.acquire_scripts = [[queued(4, 9, "waiting for compute"), hold]]
    try:
        with pytest.raises(vgpu.QueueTimeoutError, match=r"position 4 of 9: waiting for compute") as info:
            pool.acquire(memory="1GiB", compute=0.1, timeout=0.5)
    finally:
        hold.release.set()
    assert isinstance(info.value, TimeoutError)
    assert info.value.reason == reasons.QUEUE_TIMEOUT


def test_on_queued_exception_cancels_the_request(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    hold = Hold()
    servicer.acquire_scripts = [[queued(1, 1), hold]]

    def give_up(_: vgpu.QueueInfo) -> None:
        raise KeyError("user gave up")

    with pytest.raises(KeyError, match="user gave up"):
        pool.acquire(memory="1GiB", compute=0.1, on_queued=give_up)
    hold.release.set()
    assert len(servicer.calls_of("Acquire")) == 1


def test_module_level_acquire_closes_its_channel_on_release() -> None:
    with fake_daemon() as (servicer, endpoint, _):
        with vgpu.acquire(memory="1GiB", compute=0.1, endpoint=endpoint) as lease:
            assert lease.status == "granted"
        assert lease.released
        assert lease.status == "released"
        assert len(servicer.calls_of("Release")) == 1
        with pytest.raises(vgpu.LeaseEndedError):
            lease.refresh()


def test_node_defaults_to_the_asked_daemons_node(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    pool.acquire(memory="1GiB", compute=0.1).release()
    (call,) = servicer.calls_of("Acquire")
    resources = call.request.resources
    assert (resources.node, resources.any_node, resources.gang) == ("", False, False)


def test_node_none_asks_for_any_node_and_gang_is_sent(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted()], [granted()], [granted()]]
    pool.acquire(memory="1GiB", compute=0.1, count=4, node=None, gang=True).release()
    pool.acquire(memory="1GiB", compute=0.1, node=None).release()
    pool.acquire(memory="1GiB", compute=0.1, count=2, node=" node-7 ", gang=True).release()
    spanning, anywhere, named = (c.request.resources for c in servicer.calls_of("Acquire"))
    assert (spanning.node, spanning.any_node, spanning.gang, spanning.count) == ("", True, True, 4)
    assert (anywhere.node, anywhere.any_node, anywhere.gang) == ("", True, False)
    assert (named.node, named.any_node, named.gang, named.count) == ("node-7", False, True, 2)


def test_module_level_acquire_passes_node_and_gang() -> None:
    with fake_daemon() as (servicer, endpoint, _):
        vgpu.acquire(memory="1GiB", compute=0.1, count=2, node=None, gang=True, endpoint=endpoint).release()
        vgpu.acquire(memory="1GiB", compute=0.1, node="node-3", endpoint=endpoint).release()
        spanning, named = (c.request.resources for c in servicer.calls_of("Acquire"))
    assert (spanning.any_node, spanning.gang, spanning.node) == (True, True, "")
    assert (named.any_node, named.gang, named.node) == (False, False, "node-3")

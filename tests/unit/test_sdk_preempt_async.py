"""The asyncio twins of test_sdk_preempt: AsyncLease.checkpoint(), the follower task, ack, resize, usage."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

import vgpu
from tests.unit.test_sdk_preempt import NOTICE, PREEMPT, RESIZED, REVOKED, SNAPSHOT, SUSPENDED, preempt_then_resume
from tests.unit.test_sdk_support import (
    LEASE_ID,
    TOKEN,
    Fail,
    FakeWorkload,
    Hold,
    event,
    fake_daemon,
    granted,
    make_lease,
    resumed_lease,
    suspended_lease,
)
from vgpu._private import reasons
from vgpu.api.v1 import types_pb2, workload_pb2

WAIT = 10.0


@pytest.fixture
def daemon() -> Iterator[tuple[FakeWorkload, str]]:
    with fake_daemon() as (servicer, endpoint, _):
        yield servicer, endpoint


def follower_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"vgpu-follow-{LEASE_ID}"]


async def test_checkpoint_awaits_save_ack_resume_and_restore(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    start = threading.Event()
    servicer.watch_scripts = [preempt_then_resume(servicer, start=start)]
    calls: list[tuple[str, object, str]] = []

    async def save(lease: vgpu.AsyncLease, notice: vgpu.PreemptNotice) -> None:
        await asyncio.sleep(0)  # a coroutine callback is awaited
        calls.append(("save", notice, lease.env["CUDA_VISIBLE_DEVICES"]))

    def restore(lease: vgpu.AsyncLease) -> None:  # a plain callback works too
        calls.append(("restore", None, lease.env["CUDA_VISIBLE_DEVICES"]))

    async with (
        vgpu.AsyncPool(endpoint, timeout=5.0) as pool,
        await pool.acquire(memory="1GiB", compute=0.1, on_preempt=save, on_resume=restore) as lease,
    ):
        assert await lease.checkpoint() is False  # cooperative from now on
        start.set()
        assert await lease.wait_preempt(WAIT) == NOTICE
        assert lease.preempt_requested
        assert calls == []
        assert await lease.checkpoint() is True
        assert calls == [("save", NOTICE, "GPU-aaaa"), ("restore", None, "GPU-bbbb")]
        (ack,) = servicer.calls_of("AckPreempt")
        assert (ack.request.lease_id, ack.request.token) == (LEASE_ID, TOKEN)
        assert lease.status == "granted"
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
        assert lease.env["VGPU_LEASE"] == TOKEN
        assert lease.preemptions == 1
        assert await lease.checkpoint() is False


async def test_callback_mode_runs_in_the_follower_task(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    servicer.watch_scripts = [preempt_then_resume(servicer)]
    tasks: list[tuple[str, str]] = []
    resumed = asyncio.Event()

    async def save(lease: vgpu.AsyncLease, notice: vgpu.PreemptNotice) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(("save", task.get_name()))

    async def restore(lease: vgpu.AsyncLease) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(("restore", task.get_name()))
        resumed.set()

    async with vgpu.AsyncPool(endpoint, timeout=5.0) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1, on_preempt=save, on_resume=restore)
        await asyncio.wait_for(resumed.wait(), WAIT)
        follower = f"vgpu-follow-{LEASE_ID}"
        assert tasks == [("save", follower), ("restore", follower)]
        assert len(servicer.calls_of("AckPreempt")) == 1
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
        assert len(follower_tasks()) == 1
        await lease.release()
        assert follower_tasks() == []


async def test_on_preempt_raising_is_not_acknowledged(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    start = threading.Event()
    servicer.watch_scripts = [[Hold(release=start), event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING), Hold()]]

    async def save(lease: vgpu.AsyncLease, notice: vgpu.PreemptNotice) -> None:
        raise OSError("disk full")

    async with (
        vgpu.AsyncPool(endpoint, timeout=5.0) as pool,
        await pool.acquire(memory="1GiB", compute=0.1, on_preempt=save) as lease,
    ):
        assert await lease.checkpoint() is False
        start.set()
        assert await lease.wait_preempt(WAIT) == NOTICE
        with pytest.raises(OSError, match="disk full"):
            await lease.checkpoint()
        assert servicer.calls_of("AckPreempt") == []
        assert lease.preempt_requested


async def test_revoked_while_suspended_raises_lease_lost(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    revoked = make_lease(state=types_pb2.LEASE_STATE_REVOKED, token="", end_reason=reasons.END_PREEMPT_MISSED)
    servicer.watch_scripts = [
        [
            event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING),
            Hold(release=servicer.acked),
            event(2, SUSPENDED, lease=suspended_lease()),
            event(3, REVOKED, lease=revoked),
        ]
    ]
    async with vgpu.AsyncPool(endpoint, timeout=5.0) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1)
        assert await lease.wait_preempt(WAIT) == NOTICE
        with pytest.raises(vgpu.LeaseLostError, match="was revoked") as info:
            await lease.checkpoint()
        assert info.value.reason == reasons.END_PREEMPT_MISSED
        assert lease.lost
        await lease.release()


async def test_checkpoint_with_nothing_pending_makes_no_rpc(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    stream = Hold()
    servicer.watch_scripts = [[stream]]
    async with vgpu.AsyncPool(endpoint, timeout=5.0) as pool, await pool.acquire(memory="1GiB", compute=0.1) as lease:
        assert await lease.checkpoint() is False
        assert await lease.checkpoint() is False
        assert not lease.preempt_requested
        assert await asyncio.to_thread(stream.reached.wait, WAIT)
        assert [c.method for c in servicer.calls] == ["Acquire", "WatchLease"]


async def test_ack_preempt_directly_and_resume_in_the_follower(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    resume_now = threading.Event()
    servicer.watch_scripts = [
        [
            event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING),
            Hold(release=resume_now),
            event(2, workload_pb2.LEASE_EVENT_TYPE_RESUMED, lease=resumed_lease()),
            Hold(),
        ]
    ]
    resumed = asyncio.Event()
    async with vgpu.AsyncPool(endpoint, timeout=5.0) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1, on_resume=lambda _lease: resumed.set())
        assert await lease.wait_preempt(WAIT) == NOTICE
        await lease.ack_preempt()
        assert lease.status == "suspended"
        with pytest.raises(vgpu.LeaseStateError, match="suspended"):
            lease.env  # noqa: B018 -- reading it is the test
        resume_now.set()
        await asyncio.wait_for(resumed.wait(), WAIT)
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
        await lease.release()


async def test_ack_preempt_refused_raises_lease_state_error(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    servicer.watch_scripts = [[event(1, SNAPSHOT), Hold()]]
    servicer.unary_scripts["AckPreempt"] = [
        Fail(grpc.StatusCode.FAILED_PRECONDITION, reasons.NOT_PREEMPTING, "lease is not preempting")
    ]
    async with vgpu.AsyncPool(endpoint, timeout=5.0) as pool, await pool.acquire(memory="1GiB", compute=0.1) as lease:
        with pytest.raises(vgpu.LeaseStateError, match="not preempting"):
            await lease.ack_preempt()
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"


async def test_resized_updates_slices_and_calls_on_resize(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    grown = resumed_lease("GPU-aaaa", "GPU-cccc", node="node-1")
    resize = event(2, RESIZED, lease=grown)
    resize.resize.slices.extend(grown.slices)
    servicer.watch_scripts = [[event(1, SNAPSHOT), resize, Hold()]]
    resized = asyncio.Event()
    async with (
        vgpu.AsyncPool(endpoint, timeout=5.0) as pool,
        await pool.acquire(memory="1GiB", compute=(0.1, 1.0), on_resize=lambda _lease: resized.set()) as lease,
    ):
        await asyncio.wait_for(resized.wait(), WAIT)
        assert [s.gpu_uuid for s in lease.slices] == ["GPU-aaaa", "GPU-cccc"]
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-cccc"
    (call,) = servicer.calls_of("Acquire")
    assert (call.request.resources.compute_milli, call.request.resources.compute_milli_max) == (100, 1000)


async def test_report_usage_rides_on_heartbeats(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    carried = threading.Event()
    reported: list[workload_pb2.Usage] = []

    def heartbeat(request: workload_pb2.HeartbeatRequest) -> workload_pb2.HeartbeatResponse:
        if request.usage.reported:
            reported.append(request.usage)
            carried.set()
        return workload_pb2.HeartbeatResponse(state=types_pb2.LEASE_STATE_GRANTED, ttl=duration_pb2.Duration(seconds=1))

    servicer.heartbeat = heartbeat
    async with vgpu.AsyncPool(endpoint, timeout=5.0) as pool, await pool.acquire(memory="1GiB", compute=0.1) as lease:
        lease.report_usage(memory=512 * 1024**2, utilization=0.9)
        assert await asyncio.to_thread(carried.wait, WAIT)
    assert (reported[0].memory_bytes, reported[0].utilization_milli) == (512 * 1024**2, 900)

"""AsyncPool / AsyncLease (grpc.aio) against the same scripted daemon as the sync tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

import vgpu
from tests.unit.test_sdk_support import (
    LEASE_ID,
    TOKEN,
    Fail,
    FakeWorkload,
    Hold,
    event,
    fake_daemon,
    granted,
    make_gang_lease,
    make_lease,
    queued,
    short_tmp_dir,
)
from vgpu._private import loss_notice, reasons
from vgpu.api.v1 import types_pb2, workload_pb2

WAIT = 10.0
REVOKED = types_pb2.LEASE_STATE_REVOKED


@pytest.fixture
def daemon() -> Iterator[tuple[FakeWorkload, str]]:
    with fake_daemon() as (servicer, endpoint, _):
        yield servicer, endpoint


@pytest.fixture
def events_read_by_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test reads the scripted streams itself: leases open no stream of their own to hear of a loss."""
    monkeypatch.setattr(loss_notice, "LOSS_WATCH_DELAY", None)


async def test_acquire_with_queue_updates_then_release(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[queued(2, 2), queued(1, 2), granted()]]
    positions: list[int] = []

    async def on_queued(info: vgpu.QueueInfo) -> None:
        positions.append(info.position)

    async with vgpu.AsyncPool(endpoint, timeout=5.0) as pool:
        async with await pool.acquire(memory="1GiB", compute=0.1, on_queued=on_queued) as lease:
            assert isinstance(lease, vgpu.AsyncLease)
            assert lease.id == LEASE_ID
            assert lease.env["VGPU_LEASE"] == TOKEN
            assert lease.slices[0].compute_milli == 500
        assert lease.released
        await lease.release()  # idempotent
    assert positions == [2, 1]
    assert len(servicer.calls_of("Release")) == 1
    (call,) = servicer.calls_of("Acquire")
    assert call.time_remaining is not None
    assert 590 < call.time_remaining <= 601.5


async def test_units_are_checked_before_any_rpc(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    async with vgpu.AsyncPool(endpoint) as pool:
        with pytest.raises(vgpu.InvalidRequestError, match="unknown memory unit"):
            await pool.acquire(memory="3 bananas", compute=0.5)
    assert servicer.calls == []


@pytest.mark.parametrize(
    ("reason", "code", "expected"),
    [
        (reasons.NO_CAPACITY, grpc.StatusCode.RESOURCE_EXHAUSTED, vgpu.NoCapacityError),
        (reasons.NEVER_FITS, grpc.StatusCode.FAILED_PRECONDITION, vgpu.NeverFitsError),
        (reasons.UNKNOWN_GPU_MODEL, grpc.StatusCode.INVALID_ARGUMENT, vgpu.InvalidRequestError),
        (None, grpc.StatusCode.INTERNAL, vgpu.InternalError),
    ],
)
async def test_errors_map_by_reason_from_the_trailers(
    daemon: tuple[FakeWorkload, str],
    reason: str | None,
    code: grpc.StatusCode,
    expected: type[vgpu.VgpuError],
) -> None:
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[Fail(code, reason, "told you so")]]
    servicer.unary_scripts["GetLease"] = [Fail(code, reason, "told you so")]
    async with vgpu.AsyncPool(endpoint) as pool:
        with pytest.raises(vgpu.VgpuError) as from_stream:
            await pool.acquire(memory="1GiB", compute=0.1, wait=False)
        with pytest.raises(vgpu.VgpuError) as from_unary:
            await pool.get_lease(LEASE_ID, TOKEN)
    for info in (from_stream, from_unary):
        assert type(info.value) is expected
        assert grpc.RpcError not in type(info.value).__mro__
        assert info.value.code == code.name
        if reason is not None:
            assert info.value.reason == reason
            assert info.value.message == "told you so"


@pytest.mark.timeout(20)
async def test_missing_socket_fails_fast() -> None:
    with short_tmp_dir() as tmp:
        endpoint = f"unix://{tmp / 'absent.sock'}"
        async with vgpu.AsyncPool(endpoint) as pool:
            with pytest.raises(vgpu.DaemonUnavailableError, match="cannot reach vgpud at"):
                await pool.acquire(memory="1GiB", compute=0.1)


async def test_retry_after_a_broken_stream_reuses_the_request_id(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[queued(1, 1), Fail(grpc.StatusCode.UNAVAILABLE)], [granted()]]
    async with vgpu.AsyncPool(endpoint) as pool:
        await (await pool.acquire(memory="1GiB", compute=0.1)).release()
    first, second = servicer.calls_of("Acquire")
    assert first.request.request_id == second.request.request_id


async def test_heartbeat_task_marks_the_lease_lost(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    servicer.heartbeat = lambda _r: Fail(grpc.StatusCode.NOT_FOUND, reasons.LEASE_NOT_FOUND, "no such lease")
    lost = asyncio.Event()
    async with vgpu.AsyncPool(endpoint) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1)

        async def on_lost(reason: str) -> None:
            assert reason == "no such lease"
            lost.set()

        lease.on_lost = on_lost
        await asyncio.wait_for(lost.wait(), WAIT)
        assert lease.lost
        with pytest.raises(vgpu.LeaseLostError):
            await lease.refresh()
        await lease.release()  # fine after the loss


async def test_heartbeats_stop_after_release(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    servicer.heartbeat = lambda _r: workload_pb2.HeartbeatResponse(
        state=types_pb2.LEASE_STATE_GRANTED, ttl=duration_pb2.Duration(seconds=1)
    )
    async with vgpu.AsyncPool(endpoint) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1)
        assert await asyncio.to_thread(servicer.heartbeats.acquire, timeout=WAIT)
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == f"vgpu-heartbeat-{LEASE_ID}"]
        assert len(tasks) == 1
        await lease.release()
        assert tasks[0].done()
    beat = servicer.calls_of("Heartbeat")[0]
    assert beat.time_remaining is not None
    assert beat.time_remaining <= 1.0


async def test_a_pushed_end_is_heard_by_the_follower_task_and_the_block_raises(
    daemon: tuple[FakeWorkload, str],
) -> None:
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[granted(ttl=60)]]
    servicer.watch_scripts = [
        [event(1, workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT), event(2, workload_pb2.LEASE_EVENT_TYPE_REVOKED, REVOKED)]
    ]
    revoked = make_lease(state=REVOKED, token="", end_reason=reasons.END_EVICTED)
    servicer.unary_scripts["Release"] = [workload_pb2.ReleaseResponse(lease=revoked)]  # as vgpud answers then
    lost = asyncio.Event()
    seen: list[str] = []

    async def on_lost(reason: str) -> None:
        seen.append(reason)
        lost.set()

    async def block(lease: vgpu.AsyncLease) -> None:
        async with lease:
            await asyncio.wait_for(lost.wait(), WAIT)

    async with vgpu.AsyncPool(endpoint) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1, on_lost=on_lost)
        with pytest.raises(vgpu.LeaseLostError, match="was lost before the with block ended"):
            await block(lease)
        assert (lease.status, lease.released) == ("revoked", True)
        quiet = await pool.acquire(memory="1GiB", compute=0.1, raise_on_lost=False)
        assert quiet.raise_on_lost is False
    assert seen == [f"lease {LEASE_ID} was revoked"]
    assert servicer.calls_of("Heartbeat") == []


@pytest.mark.usefixtures("events_read_by_the_test")
async def test_events_resume_and_end_with_the_lease(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    servicer.watch_scripts = [
        [event(3, workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT), Fail(grpc.StatusCode.UNAVAILABLE)],
        [event(4, workload_pb2.LEASE_EVENT_TYPE_REVOKED, types_pb2.LEASE_STATE_REVOKED)],
    ]
    async with vgpu.AsyncPool(endpoint) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1)
        seen = [(e.sequence, e.type) async for e in lease.events()]
        await lease.release()
    assert seen == [(3, "snapshot"), (4, "revoked")]
    assert [c.request.after_sequence for c in servicer.calls_of("WatchLease")] == [0, 3]


@pytest.mark.usefixtures("events_read_by_the_test")
async def test_events_still_deliver_the_end_when_the_heartbeat_heard_of_it_first(
    daemon: tuple[FakeWorkload, str],
) -> None:
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    servicer.heartbeat = lambda _r: workload_pb2.HeartbeatResponse(state=types_pb2.LEASE_STATE_REVOKED)
    servicer.lease = make_lease(state=types_pb2.LEASE_STATE_REVOKED, end_reason=reasons.END_EVICTED)
    servicer.watch_scripts = [[event(2, workload_pb2.LEASE_EVENT_TYPE_REVOKED, types_pb2.LEASE_STATE_REVOKED)]]
    async with vgpu.AsyncPool(endpoint) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1)
        lost = asyncio.Event()
        lease.on_lost = lambda _reason: lost.set()
        await asyncio.wait_for(lost.wait(), WAIT)
        seen = [(e.sequence, e.type) async for e in lease.events()]
    assert seen == [(2, "revoked")]


@pytest.mark.usefixtures("events_read_by_the_test")
async def test_release_ends_an_open_event_stream(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    hold = Hold()
    servicer.watch_scripts = [[event(1, workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT), hold]]
    async with vgpu.AsyncPool(endpoint) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1)

        first = asyncio.Event()

        async def follow() -> list[int]:
            seen = []
            async for e in lease.events():
                seen.append(e.sequence)
                first.set()
            return seen

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(first.wait(), WAIT)  # the stream is open and quiet now
        await lease.release()
        assert await asyncio.wait_for(follower, WAIT) == [1]
    hold.release.set()


@pytest.mark.usefixtures("events_read_by_the_test")
async def test_cancelling_the_consumer_still_cancels_it(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    hold = Hold()
    servicer.watch_scripts = [[hold]]
    async with vgpu.AsyncPool(endpoint) as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1)

        async def follow() -> None:
            async for _ in lease.events():
                pass

        follower = asyncio.create_task(follow())
        assert await asyncio.to_thread(hold.reached.wait, WAIT)
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        await lease.release()
    hold.release.set()


async def test_attach_and_list(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    async with vgpu.AsyncPool(endpoint) as pool:
        async with await pool.attach(TOKEN) as lease:
            assert lease.id == LEASE_ID
            assert not lease.release_on_exit
        (info,) = await pool.leases()
        assert info.id == LEASE_ID
    assert servicer.calls_of("Release") == []


async def test_acquire_across_nodes_sends_any_node_and_gang(daemon: tuple[FakeWorkload, str]) -> None:
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[workload_pb2.AcquireResponse(lease=make_gang_lease())], [granted()]]
    async with vgpu.AsyncPool(endpoint, timeout=5.0) as pool:
        async with await pool.acquire(memory="20GiB", compute=0.5, count=3, node=None, gang=True) as lease:
            assert lease.nodes == ("node-1", "node-2")
            assert lease.environment("node-2")["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb,GPU-cccc"
            assert lease.environment() == lease.env
            with pytest.raises(vgpu.InvalidRequestError, match="node-1, node-2"):
                lease.environment("elsewhere")
        await (await pool.acquire(memory="1GiB", compute=0.1)).release()
    spanning, local = (c.request.resources for c in servicer.calls_of("Acquire"))
    assert (spanning.any_node, spanning.gang, spanning.node) == (True, True, "")
    assert (local.any_node, local.gang, local.node) == (False, False, "")

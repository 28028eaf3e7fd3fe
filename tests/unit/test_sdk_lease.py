"""Lease behaviour against a scripted daemon: release, heartbeats and loss, attach, refresh, events."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

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
)
from vgpu._private import loss_notice, reasons
from vgpu._private.heartbeat_policy import UNREACHABLE_REASON
from vgpu.api.v1 import types_pb2, workload_pb2

WAIT = 10.0
"""Upper bound for awaiting an event that should come within a second or two."""


@pytest.fixture
def daemon() -> Iterator[tuple[FakeWorkload, vgpu.Pool]]:
    with fake_daemon() as (servicer, endpoint, _), vgpu.Pool(endpoint, timeout=5.0) as pool:
        yield servicer, pool


def heartbeat_threads(lease_id: str = LEASE_ID) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"vgpu-heartbeat-{lease_id}"]


@pytest.fixture
def events_read_by_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test reads the scripted streams itself: leases open no stream of their own to hear of a loss."""
    monkeypatch.setattr(loss_notice, "LOSS_WATCH_DELAY", None)


def test_release_is_idempotent(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    lease = pool.acquire(memory="1GiB", compute=0.1)
    lease.release()
    lease.release()
    assert lease.released
    assert lease.status == "released"
    (call,) = servicer.calls_of("Release")
    assert (call.request.lease_id, call.request.token) == (LEASE_ID, TOKEN)


def test_release_of_a_lease_the_daemon_already_ended_is_quiet(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.unary_scripts["Release"] = [Fail(grpc.StatusCode.FAILED_PRECONDITION, reasons.LEASE_ENDED)]
    lease = pool.acquire(memory="1GiB", compute=0.1)
    lease.release()
    assert lease.released


def test_release_raises_when_the_daemon_is_down_and_the_lease_is_not_lost(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    servicer.unary_scripts["Release"] = [Fail(grpc.StatusCode.UNAVAILABLE, reasons.SHUTTING_DOWN), None]
    lease = pool.acquire(memory="1GiB", compute=0.1)
    with pytest.raises(vgpu.DaemonUnavailableError):
        lease.release()
    assert not lease.released
    servicer.unary_scripts["Release"] = []
    lease.release()  # a second try goes through
    assert lease.released


def test_with_block_releases_and_pool_close_releases_leftovers(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [
        [granted()],
        [granted(lease_id="lease-00000000000b", token="lease-00000000000b.x")],
    ]
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        inside = lease.released
    assert (inside, lease.released) == (False, True)
    other = pool.acquire(memory="1GiB", compute=0.1)
    pool.close()
    assert other.released
    assert [c.request.lease_id for c in servicer.calls_of("Release")] == [LEASE_ID, "lease-00000000000b"]


def test_heartbeat_answered_lease_ended_marks_lost_and_calls_on_lost_once(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    servicer.heartbeat = lambda _r: Fail(grpc.StatusCode.FAILED_PRECONDITION, reasons.LEASE_ENDED, "revoked by admin")
    lost = threading.Event()
    reasons_seen: list[str] = []
    lease = pool.acquire(memory="1GiB", compute=0.1)

    def on_lost(reason: str) -> None:
        reasons_seen.append(reason)
        lost.set()

    lease.on_lost = on_lost
    assert lost.wait(WAIT)
    assert lease.lost
    assert lease.lost_reason == "revoked by admin"
    for thread in heartbeat_threads():
        thread.join(WAIT)
    assert heartbeat_threads() == []
    assert reasons_seen == ["revoked by admin"]
    assert len(servicer.calls_of("Heartbeat")) == 1
    with pytest.raises(vgpu.LeaseLostError, match="revoked by admin"):
        lease.refresh()
    lease.release()  # fine after the loss
    assert lease.released


def test_heartbeat_answer_with_an_ended_state_marks_lost(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    servicer.heartbeat = lambda _r: workload_pb2.HeartbeatResponse(state=types_pb2.LEASE_STATE_REVOKED)
    servicer.lease = make_lease(state=types_pb2.LEASE_STATE_REVOKED, end_reason=reasons.END_EVICTED)
    lost = threading.Event()
    lease = pool.acquire(memory="1GiB", compute=0.1)
    lease.on_lost = lambda _reason: lost.set()
    assert lost.wait(WAIT)
    assert lease.status == "revoked"
    assert lease.lost_reason == f"lease {LEASE_ID} was revoked: {reasons.END_EVICTED}"


def test_a_pushed_end_marks_the_lease_lost_at_once(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    """The follower reads the lease's REVOKED event: lost, status and on_lost without waiting for a heartbeat."""
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=60)]]  # heartbeats 20 s apart, and the fake's say "granted"
    servicer.watch_scripts = [
        [
            event(1, workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT),
            event(2, workload_pb2.LEASE_EVENT_TYPE_REVOKED, types_pb2.LEASE_STATE_REVOKED),
            Hold(),  # the stream is not ended: the final event alone marks the loss
        ]
    ]
    lost = threading.Event()
    seen: list[tuple[str, str]] = []

    def on_lost(reason: str) -> None:
        seen.append((reason, threading.current_thread().name))
        lost.set()

    lease = pool.acquire(memory="1GiB", compute=0.1, on_lost=on_lost)
    assert lost.wait(WAIT)
    assert (lease.lost, lease.status) == (True, "revoked")
    lease.release()
    assert seen == [(f"lease {LEASE_ID} was revoked", f"vgpu-follow-{LEASE_ID}")]
    assert servicer.calls_of("Heartbeat") == []


@pytest.mark.usefixtures("events_read_by_the_test")
def test_a_heartbeat_refused_as_ended_shows_the_end_state(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    servicer.heartbeat = lambda _r: Fail(grpc.StatusCode.FAILED_PRECONDITION, reasons.LEASE_ENDED, "revoked by admin")
    servicer.lease = make_lease(state=types_pb2.LEASE_STATE_REVOKED, end_reason=reasons.END_EVICTED)
    statuses: list[str] = []
    lost = threading.Event()
    lease = pool.acquire(memory="1GiB", compute=0.1)

    def on_lost(_reason: str) -> None:
        statuses.append(lease.status)
        lost.set()

    lease.on_lost = on_lost
    assert lost.wait(WAIT)
    assert statuses == ["revoked"]  # read (GetLease) before on_lost ran
    assert lease.end_reason == reasons.END_EVICTED


@pytest.mark.usefixtures("events_read_by_the_test")
def test_a_with_block_ending_after_an_unheard_revocation_raises(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    """Release answers with the lease revoked before it: lost, on_lost once, and the block raises."""
    servicer, pool = daemon
    revoked = make_lease(state=types_pb2.LEASE_STATE_REVOKED, token="", end_reason=reasons.END_EVICTED)
    servicer.unary_scripts["Release"] = [workload_pb2.ReleaseResponse(lease=revoked)] * 2
    reasons_seen: list[str] = []
    lease = pool.acquire(memory="1GiB", compute=0.1, on_lost=reasons_seen.append)

    def block() -> None:
        with lease:
            pass

    with pytest.raises(vgpu.LeaseLostError, match="was lost before the with block ended") as caught:
        block()
    assert caught.value.reason == reasons.END_EVICTED
    assert (lease.released, lease.lost, lease.status) == (True, True, "revoked")
    assert reasons_seen == [f"lease {LEASE_ID} was revoked: {reasons.END_EVICTED}"]
    quiet = pool.acquire(memory="1GiB", compute=0.1, raise_on_lost=False)
    with quiet:
        pass
    assert quiet.lost


def test_heartbeat_gives_up_after_a_ttl_without_answers(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    servicer.heartbeat = lambda _r: Fail(grpc.StatusCode.UNAVAILABLE, None, "connection refused")
    lost = threading.Event()
    lease = pool.acquire(memory="1GiB", compute=0.1)
    lease.on_lost = lambda _reason: lost.set()
    assert lost.wait(WAIT)
    assert lease.lost_reason is not None
    assert lease.lost_reason.startswith(UNREACHABLE_REASON)
    assert len(servicer.calls_of("Heartbeat")) >= 2  # it kept trying before giving up


def test_heartbeats_carry_the_token_and_stop_after_release(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    servicer.heartbeat = lambda _r: workload_pb2.HeartbeatResponse(
        state=types_pb2.LEASE_STATE_GRANTED, ttl=duration_pb2.Duration(seconds=1)
    )
    lease = pool.acquire(memory="1GiB", compute=0.1)
    assert servicer.heartbeats.acquire(timeout=WAIT)
    assert servicer.heartbeats.acquire(timeout=WAIT)
    beat = servicer.calls_of("Heartbeat")[0]
    assert (beat.request.lease_id, beat.request.token) == (LEASE_ID, TOKEN)
    assert beat.time_remaining is not None
    assert beat.time_remaining <= 1.0  # a heartbeat's deadline never exceeds its interval
    assert heartbeat_threads() != []
    lease.release()
    assert heartbeat_threads() == []  # release() joins the thread: no heartbeat can follow
    assert not lease.lost


def test_preempting_state_and_deadline_come_from_heartbeats(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    answer = workload_pb2.HeartbeatResponse(state=types_pb2.LEASE_STATE_PREEMPTING)
    answer.preempt_deadline.FromSeconds(1_700_000_500)
    servicer.heartbeat = lambda _r: answer
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        assert servicer.heartbeats.acquire(timeout=WAIT)
        assert servicer.heartbeats.acquire(timeout=WAIT)  # the first answer has been applied by now
        assert lease.status == "preempting"
        assert lease.preempt_deadline is not None
        assert lease.preempt_deadline.timestamp() == 1_700_000_500
        assert not lease.lost


def test_refresh_updates_state(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        servicer.lease = make_lease(state=types_pb2.LEASE_STATE_SUSPENDED)
        lease.refresh()
        assert lease.status == "suspended"
        assert lease.token == TOKEN  # the answer carries no token; the lease keeps its own
        with pytest.raises(vgpu.LeaseStateError, match="suspended"):
            lease.env  # noqa: B018 -- its GPUs belong to another lease while suspended
        servicer.lease = make_lease(state=types_pb2.LEASE_STATE_GRANTED)
        lease.refresh()
        assert lease.env["VGPU_LEASE"] == TOKEN


def test_refresh_of_a_lease_ended_under_us_marks_it_lost(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    lease = pool.acquire(memory="1GiB", compute=0.1)
    servicer.lease = make_lease(state=types_pb2.LEASE_STATE_EXPIRED, end_reason=reasons.END_EXPIRED)
    lost: list[str] = []
    lease.on_lost = lost.append
    lease.refresh()
    assert lease.lost
    assert lost == [f"lease {LEASE_ID} was expired: {reasons.END_EXPIRED}"]
    lease.release()


@pytest.mark.usefixtures("events_read_by_the_test")
def test_events_resume_after_a_break_with_the_last_sequence(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.watch_scripts = [
        [
            event(5, workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT),
            event(5, workload_pb2.LEASE_EVENT_TYPE_KEEPALIVE),
            event(7, workload_pb2.LEASE_EVENT_TYPE_PREEMPT, types_pb2.LEASE_STATE_PREEMPTING),
            Fail(grpc.StatusCode.UNAVAILABLE, None, "socket closed"),
        ],
        [event(9, workload_pb2.LEASE_EVENT_TYPE_RELEASED, types_pb2.LEASE_STATE_RELEASED)],
    ]
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        events = list(lease.events())
    assert [(e.sequence, e.type, e.state) for e in events] == [
        (5, "snapshot", "granted"),
        (7, "preempt", "preempting"),
        (9, "released", "released"),
    ]
    assert events[1].preempt_deadline is not None
    assert events[1].reason == "team-b reclaims its quota"
    first, second = servicer.calls_of("WatchLease")
    assert first.request.after_sequence == 0
    assert second.request.after_sequence == 7
    assert second.request.token == TOKEN
    assert second.time_remaining is not None


@pytest.mark.usefixtures("events_read_by_the_test")
def test_events_start_after_the_given_sequence_and_can_show_keepalives(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    servicer.watch_scripts = [[event(12, workload_pb2.LEASE_EVENT_TYPE_KEEPALIVE)]]
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        assert [e.type for e in lease.events(after_sequence=12, keepalives=True)] == ["keepalive"]
    assert servicer.calls_of("WatchLease")[0].request.after_sequence == 12


def _heartbeat_says_revoked(servicer: FakeWorkload) -> None:
    servicer.heartbeat = lambda _r: workload_pb2.HeartbeatResponse(state=types_pb2.LEASE_STATE_REVOKED)
    servicer.lease = make_lease(state=types_pb2.LEASE_STATE_REVOKED, end_reason=reasons.END_EVICTED)


def _heartbeat_refused_as_ended(servicer: FakeWorkload) -> None:
    """The LEASE_ENDED error carries no lease state; the stream is still reopened once for the end."""
    servicer.heartbeat = lambda _r: Fail(grpc.StatusCode.FAILED_PRECONDITION, reasons.LEASE_ENDED, "revoked by admin")


@pytest.mark.parametrize("heartbeat_hears_end", [_heartbeat_says_revoked, _heartbeat_refused_as_ended])
@pytest.mark.usefixtures("events_read_by_the_test")
def test_events_still_deliver_the_end_when_the_heartbeat_heard_of_it_first(
    daemon: tuple[FakeWorkload, vgpu.Pool], heartbeat_hears_end: Callable[[FakeWorkload], None]
) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    heartbeat_hears_end(servicer)
    servicer.watch_scripts = [
        [
            event(1, workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT),
            event(2, workload_pb2.LEASE_EVENT_TYPE_REVOKED, types_pb2.LEASE_STATE_REVOKED),
        ]
    ]
    lost = threading.Event()
    lease = pool.acquire(memory="1GiB", compute=0.1)
    lease.on_lost = lambda _reason: lost.set()
    assert lost.wait(WAIT)
    assert [(e.type, e.state) for e in lease.events()] == [("snapshot", "granted"), ("revoked", "revoked")]
    assert len(servicer.calls_of("WatchLease")) == 1


@pytest.mark.usefixtures("events_read_by_the_test")
def test_events_of_a_lease_lost_without_an_end_raise(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    servicer.heartbeat = lambda _r: Fail(grpc.StatusCode.UNAVAILABLE, None, "daemon gone")
    lost = threading.Event()
    lease = pool.acquire(memory="1GiB", compute=0.1)
    lease.on_lost = lambda _reason: lost.set()
    assert lost.wait(WAIT)
    with pytest.raises(vgpu.LeaseLostError, match=UNREACHABLE_REASON[:20]):
        next(iter(lease.events()))
    assert servicer.calls_of("WatchLease") == []


@pytest.mark.usefixtures("events_read_by_the_test")
def test_release_from_another_thread_ends_an_open_event_stream(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    hold = Hold()
    servicer.watch_scripts = [[event(1, workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT), hold]]
    lease = pool.acquire(memory="1GiB", compute=0.1)
    seen: list[vgpu.LeaseEvent] = []
    first = threading.Event()
    done = threading.Event()

    def follow() -> None:
        for e in lease.events():
            seen.append(e)
            first.set()
        done.set()

    follower = threading.Thread(target=follow)
    follower.start()
    assert first.wait(WAIT)  # the stream is open and quiet now
    lease.release()
    assert done.wait(WAIT)
    follower.join(WAIT)
    assert [e.sequence for e in seen] == [1]
    hold.release.set()


def test_attach_reads_the_lease_from_the_environment(
    daemon: tuple[FakeWorkload, vgpu.Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, pool = daemon
    monkeypatch.setenv("VGPU_LEASE", TOKEN)
    monkeypatch.setenv("VGPU_ENDPOINT", pool.endpoint)
    with vgpu.attach() as lease:
        assert lease.id == LEASE_ID
        assert lease.token == TOKEN
        assert lease.env["VGPU_LEASE"] == TOKEN
        assert lease.status == "granted"
        assert heartbeat_threads() != []
    (get,) = servicer.calls_of("GetLease")
    assert (get.request.lease_id, get.request.token) == (LEASE_ID, TOKEN)
    assert servicer.calls_of("Release") == []  # the parent owns the lease
    assert heartbeat_threads() == []
    with vgpu.attach(release=True):
        pass
    assert len(servicer.calls_of("Release")) == 1


def test_attach_without_a_lease_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VGPU_LEASE", raising=False)
    with pytest.raises(vgpu.InvalidRequestError, match="VGPU_LEASE is not set"):
        vgpu.attach()


def test_attach_to_an_ended_lease(daemon: tuple[FakeWorkload, vgpu.Pool], monkeypatch: pytest.MonkeyPatch) -> None:
    servicer, pool = daemon
    servicer.lease = make_lease(state=types_pb2.LEASE_STATE_EXPIRED, end_reason=reasons.END_EXPIRED)
    monkeypatch.setenv("VGPU_LEASE", TOKEN)
    with pytest.raises(vgpu.LeaseEndedError, match="already ended"):
        vgpu.attach(endpoint=pool.endpoint)


def test_attach_with_a_wrong_token(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.unary_scripts["GetLease"] = [Fail(grpc.StatusCode.PERMISSION_DENIED, reasons.LEASE_TOKEN_MISMATCH)]
    with pytest.raises(vgpu.LeasePermissionError):
        vgpu.attach(endpoint=pool.endpoint, token=f"{LEASE_ID}.wrong")
    with pytest.raises(vgpu.InvalidRequestError, match=r"<lease_id>\.<secret>"):
        vgpu.attach(endpoint=pool.endpoint, token="no-secret-here")


def test_leases_and_get_lease_return_snapshots(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    (info,) = pool.leases(owner_user="alice", project="team-a")
    assert isinstance(info, vgpu.LeaseInfo)
    assert (info.id, info.state, info.project, info.ended) == (LEASE_ID, "granted", "team-a", False)
    call = servicer.calls_of("ListLeases")[0]
    assert (call.request.owner_user, call.request.project) == ("alice", "team-a")
    assert pool.get_lease(LEASE_ID, TOKEN).slices[0].gpu_uuid == "GPU-aaaa"


# --- leases across nodes -----------------------------------------------------------------------------


def test_a_lease_across_nodes_lists_its_nodes_and_each_environment(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[workload_pb2.AcquireResponse(lease=make_gang_lease())]]
    with pool.acquire(memory="20GiB", compute=0.5, count=3, node=None, gang=True) as lease:
        assert [(s.node, s.gpu_uuid) for s in lease.slices] == [
            ("node-1", "GPU-aaaa"),
            ("node-2", "GPU-bbbb"),
            ("node-2", "GPU-cccc"),
        ]
        assert lease.nodes == ("node-1", "node-2")
        assert lease.environment() == lease.env
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"  # the answering daemon's node, as before
        remote = lease.environment("node-2")
        assert remote["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb,GPU-cccc"
        assert remote["VGPU_ENDPOINT"] == "unix:///node-2"
        assert remote["VGPU_LEASE"] == TOKEN
        assert lease.environment("node-1")["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
        remote["CUDA_VISIBLE_DEVICES"] = "changed"
        assert lease.environment("node-2")["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb,GPU-cccc"  # a copy


def test_environment_of_a_node_the_lease_does_not_span_is_refused(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[workload_pb2.AcquireResponse(lease=make_gang_lease())]]
    with pool.acquire(memory="20GiB", compute=0.5, count=3, node=None, gang=True) as lease:
        with pytest.raises(vgpu.InvalidRequestError, match=r"no environment for node 'node-9'.*node-1, node-2") as info:
            lease.environment("node-9")
        assert isinstance(info.value, vgpu.VgpuError)
        assert info.value.reason == reasons.INVALID_REQUEST
        with pytest.raises(vgpu.InvalidRequestError, match="no environment for node ''"):
            lease.environment("")


def test_a_lease_without_slices_spans_no_node(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    empty = make_lease()
    del empty.slices[:]
    empty.env["CUDA_VISIBLE_DEVICES"] = ""
    servicer.acquire_scripts = [[workload_pb2.AcquireResponse(lease=empty)]]
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        assert lease.nodes == ()
        assert lease.environment() == lease.env
        with pytest.raises(vgpu.InvalidRequestError, match="on these nodes: none yet"):
            lease.environment("node-1")


def test_a_node_without_an_environment_from_the_daemon_says_so(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    _, pool = daemon
    with pool.acquire(memory="1GiB", compute=0.1) as lease:  # make_lease sends no node_environments
        assert lease.nodes == ("node-1",)
        with pytest.raises(vgpu.InvalidRequestError, match="has slices on node 'node-1' but the daemon sent no"):
            lease.environment("node-1")


def test_node_environments_follow_refresh_and_survive_the_end(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[workload_pb2.AcquireResponse(lease=make_gang_lease())]]
    lease = pool.acquire(memory="20GiB", compute=0.5, count=3, node=None, gang=True)
    moved = make_gang_lease(token="")
    moved.node_environments[1].env["CUDA_VISIBLE_DEVICES"] = "GPU-dddd,GPU-cccc"
    servicer.lease = moved
    lease.refresh()
    assert lease.environment("node-2")["CUDA_VISIBLE_DEVICES"] == "GPU-dddd,GPU-cccc"
    assert lease.environment("node-2")["VGPU_LEASE"] == TOKEN  # the SDK adds the token it holds
    ended = make_gang_lease(token="", state=types_pb2.LEASE_STATE_RELEASED, end_reason=reasons.END_RELEASED)
    del ended.node_environments[:]
    servicer.unary_scripts["Release"] = [workload_pb2.ReleaseResponse(lease=ended)]
    lease.release()
    assert lease.status == "released"
    assert lease.environment("node-2")["CUDA_VISIBLE_DEVICES"] == "GPU-dddd,GPU-cccc"


def test_attached_lease_environments_carry_the_token(
    daemon: tuple[FakeWorkload, vgpu.Pool], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, pool = daemon
    servicer.lease = make_gang_lease()  # GetLease strips the token, as vgpud does
    monkeypatch.setenv("VGPU_LEASE", TOKEN)
    with vgpu.attach(endpoint=pool.endpoint) as lease:
        assert lease.nodes == ("node-1", "node-2")
        assert lease.environment("node-2")["VGPU_LEASE"] == TOKEN
        assert lease.environment("node-1")["VGPU_LEASE"] == TOKEN


def test_snapshots_show_nodes_and_environments_without_a_token(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.lease = make_gang_lease()
    info = pool.get_lease(LEASE_ID, TOKEN)
    assert info.nodes == ("node-1", "node-2")
    assert info.environment() == info.env
    assert info.environment("node-2")["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb,GPU-cccc"
    assert all("VGPU_LEASE" not in env for env in info.node_environments.values())
    with pytest.raises(vgpu.InvalidRequestError, match="node-3"):
        info.environment("node-3")

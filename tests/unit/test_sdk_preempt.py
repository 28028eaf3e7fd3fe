"""The workload's side of preemption (sync Lease) against the scripted daemon: notices, checkpoint(),
callback mode, AckPreempt, resume on new GPUs, loss while suspended, resizes and usage reports."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import duration_pb2

import vgpu
from tests.unit.test_sdk_support import (
    LEASE_ID,
    PREEMPT_DEADLINE,
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
from vgpu._private.preemption import Phase, PreemptionTracker, Work
from vgpu.api.v1 import types_pb2, workload_pb2

WAIT = 10.0
"""Upper bound for awaiting something that should happen within a second or two."""

SNAPSHOT = workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT
PREEMPT = workload_pb2.LEASE_EVENT_TYPE_PREEMPT
SUSPENDED = workload_pb2.LEASE_EVENT_TYPE_SUSPENDED
RESUMED = workload_pb2.LEASE_EVENT_TYPE_RESUMED
RESIZED = workload_pb2.LEASE_EVENT_TYPE_RESIZED
REVOKED = workload_pb2.LEASE_EVENT_TYPE_REVOKED

NOTICE = vgpu.PreemptNotice(
    deadline=dt.datetime.fromtimestamp(PREEMPT_DEADLINE, tz=dt.UTC), reason="team-b reclaims its quota"
)


@pytest.fixture
def daemon() -> Iterator[tuple[FakeWorkload, vgpu.Pool]]:
    with fake_daemon() as (servicer, endpoint, _), vgpu.Pool(endpoint, timeout=5.0) as pool:
        yield servicer, pool


def preempt_then_resume(servicer: FakeWorkload, *, start: threading.Event | None = None) -> list[object]:
    """A stream that asks for the GPUs, waits for AckPreempt, then suspends and resumes the lease on GPU-bbbb."""
    steps: list[object] = [event(1, SNAPSHOT)]
    if start is not None:
        steps.append(Hold(release=start))
    steps += [
        event(2, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING),
        Hold(release=servicer.acked),
        event(3, SUSPENDED, lease=suspended_lease()),
        event(4, RESUMED, lease=resumed_lease()),
        Hold(),
    ]
    return steps


def test_checkpoint_saves_acks_waits_for_the_resume_and_restores(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    start = threading.Event()
    servicer.watch_scripts = [preempt_then_resume(servicer, start=start)]
    calls: list[tuple[str, object, str]] = []

    def save(lease: vgpu.Lease, notice: vgpu.PreemptNotice) -> None:
        assert servicer.calls_of("AckPreempt") == []  # saving comes before the acknowledgement
        calls.append(("save", notice, lease.env["CUDA_VISIBLE_DEVICES"]))

    def restore(lease: vgpu.Lease) -> None:
        calls.append(("restore", threading.current_thread().name, lease.env["CUDA_VISIBLE_DEVICES"]))

    with pool.acquire(memory="1GiB", compute=0.1, on_preempt=save, on_resume=restore) as lease:
        assert lease.checkpoint() is False  # nothing pending; the lease is in cooperative mode from now on
        start.set()
        assert lease.wait_preempt(WAIT) == NOTICE
        requested_before = lease.preempt_requested
        assert requested_before
        assert lease.preempt_notice == NOTICE
        assert lease.preempt_deadline == NOTICE.deadline
        assert lease.status == "preempting"
        assert calls == []  # cooperative: the follower left the notice to checkpoint()

        assert lease.checkpoint() is True

        assert calls == [("save", NOTICE, "GPU-aaaa"), ("restore", threading.current_thread().name, "GPU-bbbb")]
        (ack,) = servicer.calls_of("AckPreempt")
        assert (ack.request.lease_id, ack.request.token) == (LEASE_ID, TOKEN)
        assert ack.time_remaining is not None
        assert lease.status == "granted"
        assert not lease.preempt_requested
        assert not lease.suspended
        assert [(s.node, s.gpu_uuid) for s in lease.slices] == [("node-2", "GPU-bbbb")]
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
        assert lease.env["VGPU_LEASE"] == TOKEN  # the token this process holds rides along
        assert lease.preemptions == 1
        assert [step for step, _ in lease.steps] == ["granted", "preempt", "resumed"]
        assert lease.checkpoint() is False
        assert len(servicer.calls_of("AckPreempt")) == 1


def test_callback_mode_saves_acks_and_restores_on_the_follower_thread(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    servicer.watch_scripts = [preempt_then_resume(servicer)]
    threads: list[tuple[str, str]] = []
    resumed = threading.Event()

    def save(lease: vgpu.Lease, notice: vgpu.PreemptNotice) -> None:
        assert notice == NOTICE
        threads.append(("save", threading.current_thread().name))

    def restore(lease: vgpu.Lease) -> None:
        threads.append(("restore", threading.current_thread().name))
        resumed.set()

    with pool.acquire(memory="1GiB", compute=0.1, on_preempt=save, on_resume=restore) as lease:
        assert resumed.wait(WAIT)  # no checkpoint() call: the follower did it all
        follower = f"vgpu-follow-{LEASE_ID}"
        assert threads == [("save", follower), ("restore", follower)]
        (ack,) = servicer.calls_of("AckPreempt")
        assert (ack.request.lease_id, ack.request.token) == (LEASE_ID, TOKEN)
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
        assert lease.status == "granted"
        assert lease.checkpoint() is False


def test_on_preempt_raising_in_checkpoint_is_not_acknowledged(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    start = threading.Event()
    servicer.watch_scripts = [[Hold(release=start), event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING), Hold()]]

    def save(lease: vgpu.Lease, notice: vgpu.PreemptNotice) -> None:
        raise OSError("disk full")

    with pool.acquire(memory="1GiB", compute=0.1, on_preempt=save) as lease:
        assert lease.checkpoint() is False  # cooperative mode before the notice comes
        start.set()
        assert lease.wait_preempt(WAIT) == NOTICE
        with pytest.raises(OSError, match="disk full"):
            lease.checkpoint()
        assert servicer.calls_of("AckPreempt") == []
        assert lease.preempt_requested  # the notice stands: a later checkpoint() may try again
        assert lease.status == "preempting"
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"  # still its GPUs until acknowledged


def test_on_preempt_raising_in_the_follower_is_logged_and_not_acknowledged(
    daemon: tuple[FakeWorkload, vgpu.Pool], caplog: pytest.LogCaptureFixture
) -> None:
    servicer, pool = daemon
    servicer.watch_scripts = [[event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING), Hold()]]
    raised = threading.Event()

    def save(lease: vgpu.Lease, notice: vgpu.PreemptNotice) -> None:
        raised.set()
        raise OSError("disk full")

    lease = pool.acquire(memory="1GiB", compute=0.1, on_preempt=save)
    assert raised.wait(WAIT)
    lease.release()  # joins the follower: whatever it was going to do after the failure is done
    assert servicer.calls_of("AckPreempt") == []
    assert "on_preempt or its acknowledgement failed" in caplog.text


def test_lease_revoked_while_suspended_raises_lease_lost_from_checkpoint(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    revoked = make_lease(state=types_pb2.LEASE_STATE_REVOKED, token="", end_reason=reasons.END_EVICTED)
    servicer.watch_scripts = [
        [
            event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING),
            Hold(release=servicer.acked),
            event(2, SUSPENDED, lease=suspended_lease()),
            event(3, REVOKED, lease=revoked),
        ]
    ]
    lost: list[str] = []
    told = threading.Event()
    lease = pool.acquire(memory="1GiB", compute=0.1)

    def on_lost(reason: str) -> None:
        lost.append(reason)
        told.set()

    lease.on_lost = on_lost
    assert lease.wait_preempt(WAIT) == NOTICE
    with pytest.raises(vgpu.LeaseLostError, match="was revoked") as info:
        lease.checkpoint()
    assert info.value.reason == reasons.END_EVICTED
    assert len(servicer.calls_of("AckPreempt")) == 1
    assert lease.lost
    assert lease.status == "revoked"
    assert told.wait(WAIT)
    assert lost == [f"lease {LEASE_ID} was revoked: {reasons.END_EVICTED}"]
    lease.release()


def test_checkpoint_with_nothing_pending_returns_false_without_an_rpc(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    stream = Hold()
    servicer.watch_scripts = [[stream]]  # the follower's stream stays silent: checkpoint() must not wait for it
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        assert lease.checkpoint() is False
        assert lease.checkpoint() is False
        assert not lease.preempt_requested
        assert lease.preempt_notice is None
        assert stream.reached.wait(WAIT)
        assert [c.method for c in servicer.calls] == ["Acquire", "WatchLease"]  # only the follower's stream


def test_a_heartbeat_answer_in_preempting_state_is_a_notice(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    preempting = workload_pb2.HeartbeatResponse(
        state=types_pb2.LEASE_STATE_PREEMPTING, ttl=duration_pb2.Duration(seconds=1)
    )
    preempting.preempt_deadline.FromSeconds(1_700_000_500)
    # The daemon keeps answering "preempting" with the old deadline for a while after the resume; the SDK must
    # not take that for a second preemption.
    servicer.heartbeat = lambda _r: preempting
    servicer.watch_scripts = [
        [Hold(release=servicer.acked), event(3, SUSPENDED, lease=suspended_lease()), event(4, RESUMED), Hold()]
    ]
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        notice = lease.wait_preempt(WAIT)
        assert notice is not None
        assert notice.deadline.timestamp() == 1_700_000_500
        assert lease.checkpoint() is True
        assert servicer.heartbeats.acquire(timeout=WAIT)
        assert servicer.heartbeats.acquire(timeout=WAIT)  # a stale answer was applied after the resume
        assert not lease.preempt_requested
        assert lease.checkpoint() is False
        assert len(servicer.calls_of("AckPreempt")) == 1


def test_ack_preempt_directly_suspends_and_the_follower_runs_on_resume(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    resume_now = threading.Event()
    servicer.watch_scripts = [
        [
            event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING),
            Hold(release=resume_now),
            event(2, RESUMED, lease=resumed_lease()),
            Hold(),
        ]
    ]
    resumed = threading.Event()
    with pool.acquire(memory="1GiB", compute=0.1, on_resume=lambda _lease: resumed.set()) as lease:
        assert lease.wait_preempt(WAIT) == NOTICE
        lease.ack_preempt()  # e.g. a launcher whose child process checkpointed
        (ack,) = servicer.calls_of("AckPreempt")
        assert (ack.request.lease_id, ack.request.token) == (LEASE_ID, TOKEN)
        assert lease.status == "suspended"
        assert lease.suspended
        assert lease.slices == ()
        with pytest.raises(vgpu.LeaseStateError, match="suspended") as info:
            lease.env  # noqa: B018 -- reading it is the test
        assert info.value.reason == "LEASE_SUSPENDED"
        with pytest.raises(vgpu.LeaseStateError):
            lease.environment("node-1")
        with pytest.raises(vgpu.LeaseStateError, match="already acknowledged"):
            lease.ack_preempt()
        assert len(servicer.calls_of("AckPreempt")) == 1
        resume_now.set()
        assert resumed.wait(WAIT)
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"


def test_an_ack_answered_granted_resumes_at_once(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.watch_scripts = [[event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING), Hold()]]
    # Capacity was free: the daemon suspended and re-granted the lease within the acknowledgement.
    servicer.unary_scripts["AckPreempt"] = [workload_pb2.AckPreemptResponse(lease=resumed_lease())]
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        assert lease.wait_preempt(WAIT) == NOTICE
        assert lease.checkpoint() is True  # no RESUMED event needed: the answer already holds the new GPUs
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
        assert lease.status == "granted"
        assert not lease.suspended
        assert lease.checkpoint() is False


def test_a_direct_ack_answered_granted_runs_on_resume_once(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.watch_scripts = [
        [
            event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING),
            Hold(release=servicer.acked),
            event(2, RESUMED, lease=resumed_lease()),
            event(3, RESIZED, lease=resumed_lease()),  # the next event: the follower has acted on the one before
            Hold(),
        ]
    ]
    servicer.unary_scripts["AckPreempt"] = [workload_pb2.AckPreemptResponse(lease=resumed_lease())]
    restored: list[str] = []
    resized = threading.Event()
    with pool.acquire(
        memory="1GiB",
        compute=0.1,
        on_resume=lambda lease: restored.append(lease.env["CUDA_VISIBLE_DEVICES"]),
        on_resize=lambda _lease: resized.set(),
    ) as lease:
        assert lease.wait_preempt(WAIT) == NOTICE
        lease.ack_preempt()
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb"
        assert resized.wait(WAIT)
        assert restored == ["GPU-bbbb"]


def test_ack_preempt_without_a_preemption_is_refused_by_the_daemon(
    daemon: tuple[FakeWorkload, vgpu.Pool],
) -> None:
    servicer, pool = daemon
    servicer.watch_scripts = [[event(1, SNAPSHOT), Hold()]]
    servicer.unary_scripts["AckPreempt"] = [
        Fail(grpc.StatusCode.FAILED_PRECONDITION, reasons.NOT_PREEMPTING, "lease is not preempting")
    ]
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        with pytest.raises(vgpu.LeaseStateError, match="not preempting"):
            lease.ack_preempt()
        assert lease.status == "granted"
        assert not lease.suspended
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"


def test_a_withdrawn_preemption_restores_at_once(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    start = threading.Event()
    servicer.watch_scripts = [[Hold(release=start), event(1, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING), Hold()]]
    servicer.unary_scripts["AckPreempt"] = [
        Fail(grpc.StatusCode.FAILED_PRECONDITION, reasons.NOT_PREEMPTING, "lease is not preempting")
    ]
    steps: list[str] = []
    with pool.acquire(
        memory="1GiB",
        compute=0.1,
        on_preempt=lambda _lease, _notice: steps.append("save"),
        on_resume=lambda _lease: steps.append("restore"),
    ) as lease:
        assert lease.checkpoint() is False
        start.set()
        assert lease.wait_preempt(WAIT) == NOTICE
        assert lease.checkpoint() is True  # GetLease says it still holds its GPUs: carry on there
        assert steps == ["save", "restore"]
        assert len(servicer.calls_of("GetLease")) == 1
        assert not lease.preempt_requested
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"


def test_resized_updates_slices_and_env_and_calls_on_resize(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    grown = resumed_lease("GPU-aaaa", "GPU-cccc", node="node-1")
    resize = event(2, RESIZED, lease=grown)
    resize.resize.slices.extend(grown.slices)
    servicer.watch_scripts = [[event(1, SNAPSHOT), resize, Hold()]]
    seen: list[tuple[str, ...]] = []
    resized = threading.Event()

    def on_resize(lease: vgpu.Lease) -> None:
        seen.append(tuple(s.gpu_uuid for s in lease.slices))
        resized.set()

    with pool.acquire(memory="1GiB", compute=(0.1, 1.0), on_resize=on_resize) as lease:
        assert resized.wait(WAIT)
        assert seen == [("GPU-aaaa", "GPU-cccc")]
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-cccc"
        assert lease.status == "granted"


def test_events_carry_the_preempt_notice_and_resize_slices(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    resize = event(3, RESIZED)
    resize.resize.slices.add(node="node-1", gpu_uuid="GPU-dddd", isolation=types_pb2.ISOLATION_SHARED)
    servicer.watch_scripts = [
        [
            event(1, SNAPSHOT),
            event(2, PREEMPT, types_pb2.LEASE_STATE_PREEMPTING),
            resize,
            event(4, RESUMED, lease=resumed_lease()),
            event(5, workload_pb2.LEASE_EVENT_TYPE_RELEASED, types_pb2.LEASE_STATE_RELEASED),
        ]
    ]
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        events = list(lease.events())
    assert [(e.type, e.preempt) for e in events] == [
        ("snapshot", None),
        ("preempt", NOTICE),
        ("resized", None),
        ("resumed", None),
        ("released", None),
    ]
    assert [s.gpu_uuid for s in events[2].slices] == ["GPU-dddd"]
    assert [s.gpu_uuid for s in events[3].slices] == ["GPU-bbbb"]


def test_snapshots_and_refresh_show_steps_preemptions_and_idleness(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    shown = resumed_lease()
    shown.preempt_reason = "team-b reclaims its quota"
    shown.idle_since.FromSeconds(1_700_000_400)
    servicer.lease = shown
    info = pool.get_lease(LEASE_ID, TOKEN)
    assert [(step, at.timestamp()) for step, at in info.steps] == [
        ("granted", 1_700_000_000),
        ("preempt", 1_700_000_100),
        ("resumed", 1_700_000_300),
    ]
    assert (info.preemptions, info.preempt_reason) == (1, "team-b reclaims its quota")
    assert info.idle_since == dt.datetime.fromtimestamp(1_700_000_400, tz=dt.UTC)
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        assert (lease.steps, lease.preemptions) == ((), 0)
        lease.refresh()
        assert [step for step, _ in lease.steps] == ["granted", "preempt", "resumed"]
        assert lease.preemptions == 1
        assert lease.nodes == ("node-2",)


def test_report_usage_rides_on_the_next_heartbeats(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.acquire_scripts = [[granted(ttl=1)]]
    carried = threading.Event()
    second = threading.Event()
    usages: list[workload_pb2.Usage] = []

    def heartbeat(request: workload_pb2.HeartbeatRequest) -> workload_pb2.HeartbeatResponse:
        usages.append(request.usage)
        if request.usage.reported:
            carried.set()
        if request.usage.utilization_milli == 500:
            second.set()
        return workload_pb2.HeartbeatResponse(state=types_pb2.LEASE_STATE_GRANTED, ttl=duration_pb2.Duration(seconds=1))

    servicer.heartbeat = heartbeat
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        lease.report_usage(memory="3GiB", utilization=0.25)
        assert carried.wait(WAIT)
        lease.report_usage(utilization=0.5)  # memory left out: the last reported value stays
        assert second.wait(WAIT)
    reported = [u for u in usages if u.reported]
    assert reported
    assert (reported[0].memory_bytes, reported[0].utilization_milli) == (3 * 1024**3, 250)
    assert (usages[-1].memory_bytes, usages[-1].utilization_milli) == (3 * 1024**3, 500)
    assert all(not u.reported for u in usages[: usages.index(reported[0])])  # nothing before the report


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"memory": -1, "utilization": 0.5}, "memory must be >= 0"),
        ({"memory": "lots", "utilization": 0.5}, "cannot read memory size"),
        ({"memory": True, "utilization": 0.5}, "memory must be a number of bytes"),
        ({"memory": 0, "utilization": 1.5}, "utilization must be a share"),
        ({"memory": 0, "utilization": "50%"}, "utilization must be a share"),
    ],
)
def test_report_usage_refuses_bad_numbers(
    daemon: tuple[FakeWorkload, vgpu.Pool], kwargs: dict[str, object], fragment: str
) -> None:
    _, pool = daemon
    with pool.acquire(memory="1GiB", compute=0.1) as lease:
        with pytest.raises(vgpu.InvalidRequestError, match=fragment):
            lease.report_usage(**kwargs)  # type: ignore[arg-type]
        lease.report_usage(memory=0, utilization=0)  # an idle workload says so
        with pytest.raises(TypeError):
            lease.report_usage(memory="1GiB")  # type: ignore[call-arg]  # utilization is what idleness is judged by


def test_wait_preempt_times_out_and_raises_once_the_lease_is_gone(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.watch_scripts = [[event(1, SNAPSHOT), Hold()]]
    lease = pool.acquire(memory="1GiB", compute=0.1)
    assert lease.wait_preempt(0.05) is None
    done = threading.Event()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            lease.wait_preempt()
        except vgpu.VgpuError as exc:
            errors.append(exc)
        done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    lease.release()  # from another thread: the waiter is woken, not left hanging
    assert done.wait(WAIT)
    waiter.join(WAIT)
    assert [type(e) for e in errors] == [vgpu.LeaseEndedError]


def test_release_right_after_acquire_stops_the_follower(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.watch_scripts = [[Hold()]]
    lease = pool.acquire(memory="1GiB", compute=0.1, on_resume=lambda _lease: None)
    lease.release()  # may cancel before the follower's stream is open: the stream must still be cancelled
    assert [t for t in threading.enumerate() if t.name == f"vgpu-follow-{LEASE_ID}"] == []


# --- the tracker's rules, without a daemon ------------------------------------------------------------------


def notice_at(seconds: int) -> vgpu.PreemptNotice:
    return vgpu.PreemptNotice(deadline=dt.datetime.fromtimestamp(seconds, tz=dt.UTC), reason="test")


def test_a_resume_seen_before_the_ack_answer_is_not_lost() -> None:
    tracker = PreemptionTracker()
    assert tracker.observe_notice(notice_at(100))
    assert tracker.begin_checkpoint() is Phase.SAVING
    # The events stream shows the suspension and the resume before AckPreempt's answer is read.
    tracker.observe_state("suspended")
    assert not tracker.observe_state("granted")
    assert not tracker.acked()  # the answer (suspended) is older than the resume: not applied
    assert tracker.phase is Phase.RUNNING
    assert tracker.take_resume()
    assert not tracker.take_resume()


def test_the_ack_answer_is_applied_when_no_event_came_first() -> None:
    tracker = PreemptionTracker()
    tracker.observe_notice(notice_at(100))
    assert tracker.begin_checkpoint() is Phase.SAVING
    assert tracker.acked()
    assert tracker.suspended
    assert not tracker.take_resume()
    assert tracker.observe_state("granted")
    assert tracker.take_resume()


def test_an_acknowledged_deadline_does_not_start_a_second_round() -> None:
    tracker = PreemptionTracker()
    tracker.observe_notice(notice_at(100))
    tracker.begin_checkpoint()
    tracker.acked()
    tracker.observe_state("granted")
    assert not tracker.observe_notice(notice_at(100))  # a late heartbeat answer
    assert not tracker.requested
    assert tracker.observe_notice(notice_at(200))  # a new preemption
    assert tracker.requested


def test_the_follower_saves_only_in_callback_mode_and_never_twice_after_a_failure() -> None:
    tracker = PreemptionTracker()
    tracker.observe_notice(notice_at(100))
    assert tracker.follower_work(can_save=False) is Work.NOTHING
    assert tracker.follower_work(can_save=True) is Work.SAVE
    tracker.save_failed(by_follower=True)
    assert tracker.requested
    assert tracker.follower_work(can_save=True) is Work.NOTHING  # checkpoint() may retry; the follower does not
    assert tracker.begin_checkpoint() is Phase.SAVING

    cooperative = PreemptionTracker()
    assert cooperative.begin_checkpoint() is Phase.RUNNING
    cooperative.observe_notice(notice_at(100))
    assert cooperative.follower_work(can_save=True) is Work.NOTHING


def test_a_resume_waited_for_by_checkpoint_is_not_taken_by_the_follower() -> None:
    tracker = PreemptionTracker()
    tracker.observe_notice(notice_at(100))
    assert tracker.follower_work(can_save=True) is Work.SAVE
    assert tracker.begin_checkpoint() is Phase.SUSPENDED  # the follower saves; checkpoint() waits
    tracker.acked()
    tracker.observe_state("granted")
    assert tracker.follower_work(can_save=True) is Work.NOTHING
    assert tracker.take_resume()
    tracker.end_checkpoint()


def test_a_suspension_acknowledged_elsewhere_is_followed() -> None:
    tracker = PreemptionTracker()
    tracker.observe_notice(notice_at(100))
    tracker.observe_state("suspended")  # e.g. a launcher's child acknowledged with the token
    assert tracker.suspended
    assert not tracker.requested
    assert tracker.observe_state("granted")
    assert tracker.follower_work(can_save=False) is Work.RESUME

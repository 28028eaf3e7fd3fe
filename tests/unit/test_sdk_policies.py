"""The pure retry and heartbeat rules, driven by a fake clock."""

from __future__ import annotations

import pytest

import vgpu
from vgpu._private import errors, reasons
from vgpu._private.acquire_retry import AcquireAttempts
from vgpu._private.heartbeat_policy import UNREACHABLE_REASON, HeartbeatPolicy
from vgpu._private.lease_records import QueueInfo


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def unreachable() -> vgpu.DaemonUnavailableError:
    return vgpu.DaemonUnavailableError("cannot reach vgpud", reason=errors.DAEMON_UNREACHABLE, code="UNAVAILABLE")


def test_heartbeat_interval_is_a_third_of_the_ttl_but_not_below_half_a_second() -> None:
    assert HeartbeatPolicy(30).interval == 10
    assert HeartbeatPolicy(1).interval == 0.5
    assert HeartbeatPolicy(0).interval == 10  # unknown TTL: the daemon default of 30 s
    assert HeartbeatPolicy(30).call_timeout(client_timeout=60) == 10
    assert HeartbeatPolicy(30).call_timeout(client_timeout=2) == 2


@pytest.mark.parametrize(
    "error",
    [
        vgpu.LeaseEndedError("ended"),
        vgpu.LeaseNotFoundError("ended"),
        vgpu.LeasePermissionError("ended"),
    ],
)
def test_heartbeat_errors_that_mean_the_lease_is_gone(error: vgpu.VgpuError) -> None:
    assert HeartbeatPolicy(30).failed(error).lost_reason == "ended"


def test_heartbeat_keeps_trying_until_a_ttl_has_passed_since_the_last_answer() -> None:
    clock = Clock()
    policy = HeartbeatPolicy(9, clock=clock)
    clock.now += 3
    delays = []
    for _ in range(4):
        verdict = policy.failed(unreachable())
        assert verdict.lost_reason is None
        delays.append(verdict.retry_in)
        clock.now += verdict.retry_in
    assert delays == [0.2, 0.4, 0.8, 1.6]  # backing off, never beyond the interval
    clock.now = policy.last_ok + 8.9
    assert policy.failed(unreachable()).lost_reason is None
    clock.now = policy.last_ok + 9
    verdict = policy.failed(unreachable())
    assert verdict.lost_reason is not None
    assert verdict.lost_reason.startswith(UNREACHABLE_REASON)


def test_a_heartbeat_answer_resets_the_clock_and_takes_the_daemons_ttl() -> None:
    clock = Clock()
    policy = HeartbeatPolicy(9, clock=clock)
    clock.now += 8
    policy.answered(ttl_s=3)
    assert policy.ttl_s == 3
    clock.now += 2.5
    assert policy.failed(unreachable()).lost_reason is None


def test_acquire_never_retries_a_daemon_it_never_reached() -> None:
    attempts = AcquireAttempts(timeout=600, wait=True, endpoint="unix:///x")
    assert not attempts.wait_for_ready
    assert attempts.retry_delay(unreachable()) is None


def test_acquire_retries_a_broken_connection_after_seeing_the_daemon() -> None:
    clock = Clock()
    attempts = AcquireAttempts(timeout=10, wait=True, endpoint="unix:///x", clock=clock)
    attempts.saw_daemon()
    assert attempts.wait_for_ready
    assert [attempts.retry_delay(unreachable()) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    clock.now += 9.5
    assert attempts.retry_delay(unreachable()) is None  # no time left for another try


@pytest.mark.parametrize("reason", [reasons.SHUTTING_DOWN, reasons.STORE_UNAVAILABLE, reasons.CONFLICT])
def test_acquire_retries_what_the_daemon_asks_to_retry(reason: str) -> None:
    attempts = AcquireAttempts(timeout=10, wait=False, endpoint="unix:///x")
    assert attempts.retry_delay(vgpu.VgpuError("retry", reason=reason)) == 0.1
    assert attempts.wait_for_ready


@pytest.mark.parametrize(
    "error",
    [vgpu.NoCapacityError("full"), vgpu.InvalidRequestError("bad"), vgpu.NeverFitsError("too big")],
)
def test_acquire_does_not_retry_final_answers(error: vgpu.VgpuError) -> None:
    attempts = AcquireAttempts(timeout=10, wait=True, endpoint="unix:///x")
    attempts.saw_daemon()
    assert attempts.retry_delay(error) is None


def test_acquire_deadline_becomes_a_queue_timeout_with_the_last_position() -> None:
    clock = Clock()
    attempts = AcquireAttempts(timeout=5, wait=True, endpoint="unix:///x", clock=clock)
    attempts.queued(QueueInfo(position=3, queue_length=8, estimated_wait_s=None, reason="no memory"))
    deadline = vgpu.DaemonUnavailableError("late", reason=errors.DAEMON_TIMEOUT)
    error = attempts.classify(deadline)
    assert isinstance(error, vgpu.QueueTimeoutError)
    assert "within 5s (last at queue position 3 of 8: no memory)" in error.message
    clock.now += 5
    with pytest.raises(vgpu.QueueTimeoutError):
        attempts.start_attempt()


def test_fail_fast_acquire_deadline_is_an_unanswered_call() -> None:
    attempts = AcquireAttempts(timeout=5, wait=False, endpoint="unix:///x")
    error = attempts.classify(vgpu.DaemonUnavailableError("late", reason=errors.DAEMON_TIMEOUT))
    assert isinstance(error, vgpu.DaemonUnavailableError)
    assert error.reason == errors.DAEMON_TIMEOUT

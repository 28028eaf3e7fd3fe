"""ComputeThrottle on the NumPy backend with a fake clock: HARD caps, BURST lifts, OFF measures, interrupts wake."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpu._private.errors import InvalidRequestError
from vgpu._private.runtime.array_backend import DeviceTimer
from vgpu._private.runtime.compute_throttle import ComputeThrottle, ThrottlePolicy
from vgpu._private.runtime.numpy_backend import NumpyBackend


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeTimer:
    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._start = clock.now

    def stop(self) -> float:
        return self._clock.now - self._start


class FakeClockBackend(NumpyBackend):
    """The NumPy backend with wall time read from the fake clock, so 'work' is advancing the clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(1 << 30)
        self._clock = clock

    def start_timer(self) -> DeviceTimer:
        return FakeTimer(self._clock)


class FakeWait:
    """Waiting advances the fake clock by the whole timeout, unless the event is already set."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.timeouts: list[float] = []

    def __call__(self, event: threading.Event, timeout: float) -> bool:
        self.timeouts.append(timeout)
        if event.is_set():
            return True
        self._clock.advance(timeout)
        return False


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wait(clock: FakeClock) -> FakeWait:
    return FakeWait(clock)


def make(
    clock: FakeClock,
    wait: FakeWait,
    share: float,
    policy: ThrottlePolicy | str = ThrottlePolicy.HARD,
    capacity_s: float = 0.05,
) -> ComputeThrottle:
    return ComputeThrottle(FakeClockBackend(clock), share, policy, capacity_s=capacity_s, clock=clock, wait=wait)


def run_steps(throttle: ComputeThrottle, clock: FakeClock, count: int, work_s: float = 0.01) -> float:
    """A workload that always has work queued: `count` steps of `work_s` GPU time; returns the wall time taken."""
    start = clock.now
    for _ in range(count):
        clock.advance(work_s)
        throttle.step()
    return clock.now - start


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.9])
def test_hard_caps_the_measured_share(clock: FakeClock, wait: FakeWait, share: float) -> None:
    throttle = make(clock, wait, share)
    throttle.step()
    wall = run_steps(throttle, clock, 2000)
    stats = throttle.stats()
    assert stats.gpu_seconds == pytest.approx(20.0)
    # Above the share by at most the bank; below it only by the float noise of the waits.
    assert stats.gpu_seconds <= share * wall + 0.05 + 1e-6
    assert stats.gpu_seconds / wall == pytest.approx(share, rel=0.01)
    assert throttle.utilization() == pytest.approx(share, rel=0.02)
    assert stats.throttled_seconds == pytest.approx(wall - stats.gpu_seconds, rel=1e-6)


def test_hard_gives_long_steps_their_full_share(clock: FakeClock, wait: FakeWait) -> None:
    """Steps far longer than capacity / share still get the share: what they earn while running is kept."""
    throttle = make(clock, wait, 0.5, capacity_s=0.05)
    throttle.step()
    wall = run_steps(throttle, clock, 50, work_s=1.0)
    assert throttle.stats().gpu_seconds / wall == pytest.approx(0.5, rel=0.01)


def test_off_measures_but_never_waits(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 0.25, ThrottlePolicy.OFF)
    throttle.step()
    wall = run_steps(throttle, clock, 500)
    stats = throttle.stats()
    assert wait.timeouts == []
    assert stats.throttled_seconds == 0.0
    assert stats.gpu_seconds == pytest.approx(wall)
    assert throttle.utilization() == pytest.approx(1.0)


def test_burst_runs_at_full_speed_while_the_gpu_is_otherwise_idle(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 0.25, "Burst")
    assert throttle.policy is ThrottlePolicy.BURST
    assert not throttle.stats().bursting
    throttle.set_gpu_idle(True)
    assert throttle.stats().bursting
    throttle.step()
    wall = run_steps(throttle, clock, 1000)
    assert throttle.stats().gpu_seconds / wall == pytest.approx(1.0, rel=0.01)

    throttle.set_gpu_idle(False)  # another tenant wants the GPU: back to the share
    assert not throttle.stats().bursting
    wall = run_steps(throttle, clock, 2000)
    assert throttle.utilization() == pytest.approx(0.25, rel=0.02)
    assert wall == pytest.approx(20.0 / 0.25, rel=0.01)


def test_hard_ignores_an_idle_gpu(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 0.25, ThrottlePolicy.HARD)
    throttle.set_gpu_idle(True)
    assert not throttle.stats().bursting
    throttle.step()
    wall = run_steps(throttle, clock, 1000)
    assert throttle.stats().gpu_seconds / wall == pytest.approx(0.25, rel=0.01)


def test_set_share_changes_the_rate_live(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 0.25)
    throttle.step()
    run_steps(throttle, clock, 1000)
    throttle.set_share(0.5)
    assert throttle.share == 0.5
    wall = run_steps(throttle, clock, 2000)
    assert wall == pytest.approx(20.0 / 0.5, rel=0.01)
    assert throttle.utilization() == pytest.approx(0.5, rel=0.02)
    assert throttle.stats().share == 0.5


def test_a_waiting_step_replans_when_the_share_grows(clock: FakeClock) -> None:
    timeouts: list[float] = []
    throttle: ComputeThrottle

    def wait(event: threading.Event, timeout: float) -> bool:
        timeouts.append(timeout)
        if len(timeouts) == 1:
            throttle.set_share(1.0)  # a resize lands while the step waits
            return event.is_set()
        clock.advance(timeout)
        return False

    throttle = ComputeThrottle(FakeClockBackend(clock), 0.25, capacity_s=0.05, clock=clock, wait=wait)
    throttle.step()
    clock.advance(1.0)
    throttle.step()  # debt: 1.0 charged, 0.25 earned, 0.05 banked -> 0.7 GPU-seconds
    assert timeouts[0] == pytest.approx(0.7 / 0.25)
    assert timeouts[1:] == [pytest.approx(0.7 / 1.0)]


def test_the_first_step_charges_nothing(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 0.5)
    clock.advance(5.0)  # work before the first checkpoint is not measured: no timer ran
    throttle.step()
    assert throttle.stats().gpu_seconds == 0.0
    assert wait.timeouts == []


def test_measure_charges_a_helper_launch_and_waits_off_its_debt(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 0.5)
    with throttle.measure():
        clock.advance(2.0)
    assert throttle.stats().gpu_seconds == pytest.approx(2.0)
    assert sum(wait.timeouts) == pytest.approx((2.0 - 0.05 - 0.5 * 2.0) / 0.5)


def test_measure_inside_a_step_does_not_count_twice(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 1.0, ThrottlePolicy.OFF)
    throttle.step()
    clock.advance(1.0)
    with throttle.measure():
        clock.advance(2.0)
    clock.advance(1.0)
    throttle.step()
    assert throttle.stats().gpu_seconds == pytest.approx(4.0)


def test_measure_charges_a_failed_launch_and_reraises(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 0.5)

    def launch() -> None:
        with throttle.measure():
            clock.advance(1.0)
            raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        launch()
    assert throttle.stats().gpu_seconds == pytest.approx(1.0)


def test_pause_stops_charging_until_the_next_step(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 0.5, ThrottlePolicy.OFF)
    throttle.step()
    clock.advance(1.0)
    throttle.pause()
    clock.advance(100.0)  # suspended: not GPU time
    throttle.step()
    assert throttle.stats().gpu_seconds == pytest.approx(1.0)
    assert throttle.utilization() == 0.0  # the last 10 s held no work


def test_interrupt_wakes_a_step_waiting_for_the_bucket(clock: FakeClock) -> None:
    waiting = threading.Event()

    def wait(event: threading.Event, timeout: float) -> bool:
        waiting.set()
        return event.wait(timeout)  # the fake clock stands still: only an interrupt ends this wait

    throttle = ComputeThrottle(FakeClockBackend(clock), 0.5, capacity_s=0.05, clock=clock, wait=wait)
    throttle.step()
    clock.advance(100.0)
    worker = threading.Thread(target=throttle.step)
    worker.start()
    assert waiting.wait(timeout=30)
    assert worker.is_alive()
    throttle.interrupt()
    worker.join(timeout=30)
    assert not worker.is_alive()


def test_an_interrupt_before_the_wait_skips_it_once(clock: FakeClock, wait: FakeWait) -> None:
    throttle = make(clock, wait, 0.5)
    throttle.step()
    clock.advance(10.0)
    throttle.interrupt()
    throttle.step()
    assert wait.timeouts == []
    clock.advance(0.01)
    throttle.step()  # the interrupt was used up: this step pays the debt
    assert sum(wait.timeouts) > 0.0


@pytest.mark.parametrize("share", [0.0, -0.1, 1.01, float("nan")])
def test_rejects_a_bad_share(clock: FakeClock, wait: FakeWait, share: float) -> None:
    with pytest.raises(InvalidRequestError, match="share"):
        make(clock, wait, share)
    throttle = make(clock, wait, 0.5)
    with pytest.raises(InvalidRequestError, match="share"):
        throttle.set_share(share)
    assert throttle.share == 0.5


def test_rejects_a_bad_policy_capacity_or_window(clock: FakeClock, wait: FakeWait) -> None:
    with pytest.raises(InvalidRequestError, match="hard, burst or off"):
        make(clock, wait, 0.5, "sometimes")
    with pytest.raises(InvalidRequestError, match="capacity"):
        make(clock, wait, 0.5, capacity_s=0.0)
    with pytest.raises(InvalidRequestError, match="window"):
        ComputeThrottle(FakeClockBackend(clock), 0.5, usage_window_s=0.0, clock=clock, wait=wait)


def test_runs_on_the_real_numpy_backend() -> None:
    throttle = ComputeThrottle(NumpyBackend(1 << 20), 0.5, ThrottlePolicy.OFF)
    throttle.step()
    np.linalg.svd(np.ones((64, 64)))
    throttle.step()
    stats = throttle.stats()
    assert stats.gpu_seconds > 0.0
    assert stats.policy is ThrottlePolicy.OFF
    assert 0.0 <= stats.utilization <= 1.0


@settings(max_examples=100, deadline=None)
@given(
    share=st.floats(min_value=0.05, max_value=1.0),
    capacity=st.floats(min_value=0.001, max_value=1.0),
    steps=st.lists(st.tuples(st.floats(0.0, 0.5), st.floats(0.0, 2.0)), min_size=1, max_size=60),
)
def test_hard_holds_at_every_checkpoint(share: float, capacity: float, steps: list[tuple[float, float]]) -> None:
    """After each step returns, all GPU time so far fits in share * elapsed + the bank, whatever the workload."""
    clock = FakeClock()
    throttle = ComputeThrottle(FakeClockBackend(clock), share, capacity_s=capacity, clock=clock, wait=FakeWait(clock))
    start = clock.now
    throttle.step()
    for work, idle in steps:
        clock.advance(work)
        throttle.step()
        assert throttle.stats().gpu_seconds <= share * (clock.now - start) + capacity + 1e-6
        throttle.pause()
        clock.advance(idle)
        throttle.step()

"""ComputeThrottle on a real GPU: CUDA-event GPU time, a continuously fed workload held to its share.

The workload launches kernels that spin on the GPU's own nanosecond timer for a fixed time, so the GPU time it
used is known independently of the CUDA events the throttle measures with.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from tests.gpu.cupy_device import cupy_or_skip
from vgpu._private.runtime.array_backend import DeviceTimer
from vgpu._private.runtime.compute_throttle import ComputeThrottle, ThrottlePolicy
from vgpu._private.runtime.cupy_backend import CudaEventTimer
from vgpu._private.runtime.numpy_backend import NumpyBackend

pytestmark = pytest.mark.gpu

cp: Any = cupy_or_skip()

SPIN_SOURCE = r"""
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
"""
KERNEL_S = 0.001
KERNELS_PER_STEP = 4
RUN_S = 2.0
CAPACITY_S = 0.02  # 1% of the run: the bank barely moves the measured share


class CudaEventBackend(NumpyBackend):
    """The CuPy backend's device timer without its budgeted allocator: the timer is all the throttle uses."""

    name = "cupy"

    def start_timer(self) -> DeviceTimer:
        return CudaEventTimer()


@pytest.fixture(scope="module")
def spin() -> Any:
    kernel = cp.RawKernel(SPIN_SOURCE, "spin")
    kernel((1,), (32,), (np.uint64(1000),))  # compile and load outside any measured segment
    cp.cuda.Device().synchronize()
    return kernel


def run_fed_workload(spin: Any, throttle: ComputeThrottle) -> tuple[float, float]:
    """Keep the GPU fed for RUN_S of wall time, a checkpoint every few kernels; (GPU seconds spun, wall)."""
    spin_ns = np.uint64(int(KERNEL_S * 1e9))
    launched = 0
    throttle.step()
    start = time.monotonic()
    while time.monotonic() - start < RUN_S:
        for _ in range(KERNELS_PER_STEP):
            spin((1,), (32,), (spin_ns,))
        launched += KERNELS_PER_STEP
        throttle.step()
    throttle.pause()
    return launched * KERNEL_S, time.monotonic() - start


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_hard_holds_a_fed_workload_to_its_share(spin: Any, share: float) -> None:
    throttle = ComputeThrottle(CudaEventBackend(1 << 30), share, ThrottlePolicy.HARD, capacity_s=CAPACITY_S)
    gpu, wall = run_fed_workload(spin, throttle)
    assert gpu / wall == pytest.approx(share, abs=0.05)
    # The CUDA events saw the spun time (plus launch gaps), not the waits.
    assert gpu * 0.99 <= throttle.stats().gpu_seconds <= gpu * 1.15
    assert throttle.stats().throttled_seconds == pytest.approx(wall * (1 - share), abs=0.1 * wall)


def test_the_same_workload_unthrottled_uses_the_whole_gpu(spin: Any) -> None:
    """The control: without the throttle this workload is far above either share, so the test above can fail."""
    throttle = ComputeThrottle(CudaEventBackend(1 << 30), 0.25, ThrottlePolicy.OFF, capacity_s=CAPACITY_S)
    gpu, wall = run_fed_workload(spin, throttle)
    assert gpu / wall >= 0.85
    assert throttle.stats().throttled_seconds == 0.0


def test_a_live_resize_changes_the_measured_share(spin: Any) -> None:
    throttle = ComputeThrottle(CudaEventBackend(1 << 30), 0.25, ThrottlePolicy.HARD, capacity_s=CAPACITY_S)
    run_fed_workload(spin, throttle)
    throttle.set_share(0.5)
    gpu, wall = run_fed_workload(spin, throttle)
    assert gpu / wall == pytest.approx(0.5, abs=0.05)


def test_a_timer_started_on_one_device_stops_from_a_thread_on_another(spin: Any) -> None:
    """A suspend stops the segment's timer from the lease's thread, whose current device may not be the lease's."""
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    with cp.cuda.Device(1):
        timer = CudaEventTimer()  # the workload's thread, on the lease's GPU
        spin((1,), (32,), (np.uint64(int(KERNEL_S * 1e9)),))
    stopped: list[float] = []
    thread = threading.Thread(target=lambda: stopped.append(timer.stop()))  # a new thread: device 0 is current
    thread.start()
    thread.join(timeout=60)
    assert len(stopped) == 1
    assert stopped[0] >= KERNEL_S * 0.99

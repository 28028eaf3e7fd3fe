"""Preemptible CUDA kernels: a host thread sets the mapped flag mid-kernel, the kernel stops, a resume finishes.

The per-item work is not idempotent (x = x * 1.5 + i % 7), so an item run twice or skipped breaks the bit-exact
comparison with an uninterrupted run of the same kernel.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from tests.gpu.cupy_device import cupy_or_skip
from vgpu._private.errors import InvalidRequestError
from vgpu._private.runtime.preempt_flag import HostPreemptFlag, MappedPreemptFlag
from vgpu._private.runtime.preemptible_kernel import CudaPreemptibleKernel, Progress

pytestmark = pytest.mark.gpu

cp: Any = cupy_or_skip()

ITEM_SOURCE = r"""
__device__ __forceinline__ unsigned long long test_clock_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ void item(unsigned long long i, float* x, unsigned long long spin_ns, volatile int* started) {
    if (i == 0) {
        *started = 1;
        __threadfence_system();
    }
    const unsigned long long t0 = test_clock_ns();
    while (test_clock_ns() - t0 < spin_ns) {
    }
    x[i] = x[i] * 1.5f + (float)(i % 7);
}
"""
ARG_TYPES = ("float*", "unsigned long long", "volatile int*")
THREADS = 128
CHUNK = THREADS  # one item per thread per chunk: a chunk lasts one spin
SPIN_NS = np.uint64(500_000)  # 0.5 ms per item
ROUNDS = 2000  # chunks per block: about 1 s for the whole kernel when nothing stops it


@pytest.fixture(scope="module")
def blocks() -> int:
    return int(cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"])


@pytest.fixture(scope="module")
def total(blocks: int) -> int:
    return blocks * CHUNK * ROUNDS


@pytest.fixture
def kernel(blocks: int, total: int) -> CudaPreemptibleKernel:
    return CudaPreemptibleKernel(ITEM_SOURCE, ARG_TYPES, total, chunk=CHUNK, threads_per_block=THREADS, blocks=blocks)


def initial(total: int) -> Any:
    return cp.linspace(-1.0, 1.0, total, dtype=cp.float32)


def test_mapped_flag_is_shared_between_host_and_device() -> None:
    flag = MappedPreemptFlag()
    try:
        assert not flag.is_set()
        assert int(flag.device_array.get()[0]) == 0
        flag.set()
        assert flag.is_set()
        assert int(flag.device_array.get()[0]) == 1  # the device reads the host's plain store
        flag.clear()
        assert int(flag.device_array.get()[0]) == 0
        flag.device_array.fill(1)  # a device write lands in host memory
        cp.cuda.Device().synchronize()
        assert flag.is_set()
    finally:
        flag.close()
    with pytest.raises(InvalidRequestError, match="closed"):
        _ = flag.device_array
    flag.set()  # a late preemption after close is harmless
    assert flag.is_set()
    flag.close()


def test_a_flag_is_made_on_the_device_asked_for() -> None:
    """The runtime makes the flag on the lease's GPU, which need not be the current device."""
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    current = cp.cuda.runtime.getDevice()
    other = 1 if current == 0 else 0
    with MappedPreemptFlag(other) as flag:
        assert flag.device_array.device.id == other
        assert cp.cuda.runtime.getDevice() == current
        flag.set()
        assert int(flag.device_array.get()[0]) == 1


def test_stops_when_a_host_thread_sets_the_flag_and_resumes_bit_exact(
    kernel: CudaPreemptibleKernel, total: int
) -> None:
    with MappedPreemptFlag() as stop, MappedPreemptFlag() as started:
        reference = initial(total)
        assert kernel.run((reference, np.uint64(0), started.device_array), flag=stop).complete

        started.clear()
        x = initial(total)
        before = x.copy()
        seen_start: list[bool] = []

        def preempt() -> None:
            deadline = time.monotonic() + 60
            while not started.is_set() and time.monotonic() < deadline:
                pass  # a device write has no host event to wait on: spin on the mapped word
            seen_start.append(started.is_set())
            stop.set()

        setter = threading.Thread(target=preempt)
        setter.start()
        first = kernel.run((x, SPIN_NS, started.device_array), flag=stop)
        setter.join(timeout=60)
        assert seen_start == [True]

        assert first.stopped
        assert 0 < first.done_items < total // 2  # it stopped long before the ~1 s of work was done
        assert first.done_items % CHUNK == 0
        assert bool(cp.array_equal(x[first.done_items :], before[first.done_items :]))  # past progress: untouched
        assert bool(cp.array_equal(x[: first.done_items], reference[: first.done_items]))

        stop.clear()
        second = kernel.run((x, np.uint64(0), started.device_array), flag=stop, start=first.done_items)
        assert second == Progress(total, total, stopped=False)
        assert bool(cp.array_equal(x, reference))


def test_a_set_flag_launches_nothing(kernel: CudaPreemptibleKernel, total: int) -> None:
    with MappedPreemptFlag() as stop, MappedPreemptFlag() as started:
        stop.set()
        x = initial(total)
        assert kernel.run((x, SPIN_NS, started.device_array), flag=stop, start=CHUNK) == Progress(
            CHUNK, total, stopped=True
        )
        assert bool(cp.array_equal(x, initial(total)))


def test_rejects_a_host_flag_and_wrong_arguments(kernel: CudaPreemptibleKernel, total: int) -> None:
    with pytest.raises(InvalidRequestError, match="device-visible flag"):
        kernel.run((initial(total), SPIN_NS, initial(1)), flag=HostPreemptFlag())
    with MappedPreemptFlag() as stop, pytest.raises(InvalidRequestError, match="takes 3 arguments"):
        kernel.run((initial(total),), flag=stop)

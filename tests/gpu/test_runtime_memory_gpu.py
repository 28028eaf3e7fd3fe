"""The CuPy backend's memory budget on a real GPU: the pool limit, refusals, cache release, mem_info, UUIDs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pynvml
import pytest

from vgpu._private.errors import InvalidRequestError, MemoryBudgetError
from vgpu._private.runtime.cupy_backend import CupyBackend, find_cupy_device, uuid_from_bytes

pytestmark = pytest.mark.gpu

MIB = 1024**2
ROOM = 64 * MIB
"""What the tests let the pool hold: small, so they run beside other tenants of the GPU."""


@pytest.fixture(scope="module")
def cp() -> Any:
    cupy = pytest.importorskip("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"CuPy sees no CUDA driver: {exc}")
    if count == 0:
        pytest.skip("CuPy sees no GPU")
    return cupy


@pytest.fixture
def backend(cp: Any) -> Iterator[CupyBackend]:
    """A backend on device 0 whose pool may hold exactly ROOM bytes; its allocator is removed afterwards."""
    _, total = cp.cuda.Device(0).mem_info
    runtime = CupyBackend(0, int(total))
    try:
        runtime.set_memory_limit(runtime.outside_pool_bytes + ROOM)
        yield runtime
    finally:
        runtime.close()


def test_allocations_up_to_the_budget_succeed_and_the_next_is_refused(cp: Any, backend: CupyBackend) -> None:
    with cp.cuda.Device(0):
        chunks = [cp.empty(8 * MIB, dtype=cp.uint8) for _ in range(ROOM // (8 * MIB))]
        with pytest.raises(MemoryBudgetError) as info:
            cp.empty(8 * MIB, dtype=cp.uint8)
    assert "past its budget of" in str(info.value)
    assert "in use" in str(info.value)
    assert isinstance(info.value.__cause__, cp.cuda.memory.OutOfMemoryError)
    usage = backend.memory_usage()
    assert usage.refusals == 1
    assert usage.used_bytes == backend.outside_pool_bytes + ROOM == usage.limit_bytes
    with cp.cuda.Device(0), pytest.raises(MemoryBudgetError):
        cp.empty(1, dtype=cp.uint8)  # still refused, clearly, after a refusal
    assert backend.memory_usage().refusals == 2
    del chunks


def test_release_cached_gives_freed_blocks_back(cp: Any, backend: CupyBackend) -> None:
    with cp.cuda.Device(0):
        array = cp.ones(16 * MIB, dtype=cp.uint8)
        del array
    assert backend.memory_usage().used_bytes == backend.outside_pool_bytes + 16 * MIB  # cached by the pool
    backend.release_cached()
    assert backend.memory_usage().used_bytes == backend.outside_pool_bytes


def test_mem_info_clamps_to_the_budget(cp: Any, backend: CupyBackend) -> None:
    budget = backend.memory_usage().limit_bytes
    with cp.cuda.Device(0):
        array = cp.zeros(32 * MIB, dtype=cp.uint8)
    free, total = backend.mem_info()
    device_free, device_total = backend.device_memory()
    assert total == min(budget, device_total)
    assert 0 <= free <= min(budget - backend.outside_pool_bytes - 32 * MIB, device_free)
    del array


def test_host_round_trip_through_pinned_memory(cp: Any, backend: CupyBackend) -> None:
    host = np.arange(1000, dtype=np.float32)
    device_array = backend.from_host(host)
    assert backend.is_array(device_array)
    out = backend.empty_host(host.shape, host.dtype)
    assert backend.to_host(device_array, out=out) is out
    backend.synchronize()
    assert np.array_equal(out, host)


def test_timer_measures_device_time(cp: Any, backend: CupyBackend) -> None:
    with cp.cuda.Device(0):
        timer = backend.start_timer()
        cp.arange(1 << 20, dtype=cp.float32).sum()
        assert timer.stop() > 0.0


def test_budget_smaller_than_the_context_is_refused(cp: Any) -> None:
    previous = cp.cuda.get_allocator()
    with pytest.raises(InvalidRequestError, match="smaller than this process's CUDA context"):
        CupyBackend(0, MIB)
    assert cp.cuda.get_allocator() == previous


def test_close_puts_the_previous_allocator_back(cp: Any) -> None:
    previous = cp.cuda.get_allocator()
    _, total = cp.cuda.Device(0).mem_info
    runtime = CupyBackend(0, int(total))
    assert cp.cuda.get_allocator() == runtime._malloc
    runtime.close()
    assert cp.cuda.get_allocator() == previous


def test_closing_an_older_backend_keeps_the_newer_budget(cp: Any) -> None:
    """A resume on another GPU makes the new backend before it closes the old one: the new budget must stay."""
    _, total = cp.cuda.Device(0).mem_info
    old = CupyBackend(0, int(total))
    new = CupyBackend(0, int(total))
    try:
        new.set_memory_limit(new.outside_pool_bytes + ROOM)
        old.close()
        assert cp.cuda.get_allocator() == new._malloc
        with cp.cuda.Device(0), pytest.raises(MemoryBudgetError):
            cp.empty(ROOM + 8 * MIB, dtype=cp.uint8)
    finally:
        new.close()
    with cp.cuda.Device(0):
        block = cp.empty(MIB, dtype=cp.uint8)  # both closed: the request goes past both pools
    assert old.memory_usage().used_bytes == old.outside_pool_bytes
    assert new.memory_usage().used_bytes == new.outside_pool_bytes
    del block


def test_device_zero_is_found_by_its_own_uuid(cp: Any) -> None:
    raw = bytes(cp.cuda.runtime.getDeviceProperties(0)["uuid"])
    if len(raw) == 16:
        assert find_cupy_device(uuid_from_bytes(raw)) == 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML unavailable: {exc}")
    try:
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(cp.cuda.runtime.deviceGetPCIBusId(0))
        nvml_uuid = pynvml.nvmlDeviceGetUUID(handle)
        try:
            mig_enabled = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
        except pynvml.NVMLError:
            mig_enabled = False  # GPUs without MIG answer NotSupported
    finally:
        pynvml.nvmlShutdown()
    if mig_enabled:
        pytest.skip("device 0 is a MIG instance: its PCI bus id names the parent GPU, not the instance")
    assert find_cupy_device(nvml_uuid) == 0

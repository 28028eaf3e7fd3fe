"""The lease memory budget: MemoryBudget, NumPy's accounted namespace, the NumPy backend, PyTorch's cap, and the
CuPy backend's refusal logic against a stand-in `cupy` module (the real one is exercised in tests/gpu)."""

from __future__ import annotations

import gc
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pynvml
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpu._private import reasons
from vgpu._private.errors import InvalidRequestError, MemoryBudgetError
from vgpu._private.runtime import cupy_backend
from vgpu._private.runtime.memory_budget import MemoryBudget, MemoryUsage, workload_mem_info
from vgpu._private.runtime.numpy_backend import NumpyBackend
from vgpu._private.runtime.numpy_memory import AccountedNumpy
from vgpu._private.runtime.torch_budget import apply_torch_budget

GIB = 1024**3
MIB = 1024**2


# --- MemoryBudget ---------------------------------------------------------------------------------------------


def test_reserve_and_release_track_use_and_peak() -> None:
    budget = MemoryBudget(100)
    budget.reserve(60)
    budget.reserve(40)
    budget.release(70)
    assert (budget.used, budget.peak, budget.limit, budget.refusals) == (30, 100, 100, 0)
    assert budget.usage() == MemoryUsage(limit_bytes=100, used_bytes=30, peak_bytes=100, refusals=0)


def test_refusal_names_the_budget_the_use_and_the_fix() -> None:
    budget = MemoryBudget(8 * GIB)
    budget.reserve(int(7.5 * GIB))
    with pytest.raises(MemoryBudgetError) as info:
        budget.reserve(GIB)
    message = str(info.value)
    assert "allocating 1GiB" in message
    assert "to 8.5GiB" in message
    assert "budget of 8GiB" in message
    assert "7.5GiB in use" in message
    assert "acquire more memory=" in message
    assert info.value.reason == reasons.OVER_MEMORY_BUDGET
    assert isinstance(info.value, MemoryError)
    assert budget.used == int(7.5 * GIB)


def test_allocating_after_a_refusal_keeps_failing_clearly_and_counts() -> None:
    budget = MemoryBudget(1000)
    budget.reserve(900)
    messages = []
    for expected_count in (1, 2, 3):
        with pytest.raises(MemoryBudgetError) as info:
            budget.reserve(200)
        messages.append(str(info.value))
        assert budget.refusals == expected_count
        assert budget.used == 900
    assert len(set(messages)) == 1


def test_release_never_goes_below_zero() -> None:
    budget = MemoryBudget(100)
    budget.reserve(10)
    budget.release(50)
    budget.release(-5)
    assert budget.used == 0


def test_lowering_the_limit_below_use_refuses_until_released() -> None:
    budget = MemoryBudget(1000)
    budget.reserve(800)
    budget.set_limit(500)
    with pytest.raises(MemoryBudgetError, match="budget of 500B"):
        budget.reserve(1)
    assert budget.used == 800
    assert budget.mem_info(10_000, 10_000) == (0, 500)
    budget.release(400)
    budget.reserve(100)
    assert budget.used == 500


@pytest.mark.parametrize(
    ("limit", "used", "device", "expected"),
    [
        (100, 30, (1000, 1000), (70, 100)),  # the budget binds
        (100, 30, (20, 1000), (20, 100)),  # the device has less free than the budget allows
        (5000, 30, (800, 1000), (800, 1000)),  # a budget past the device shows the device
        (100, 150, (1000, 1000), (0, 100)),  # use past a lowered limit never underflows
        (100, 0, (0, 0), (0, 0)),
    ],
)
def test_mem_info_clamps_to_the_budget(
    limit: int, used: int, device: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert workload_mem_info(limit, used, *device) == expected


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "8GiB", None])
def test_bad_limits_are_invalid_requests(limit: Any) -> None:
    with pytest.raises(InvalidRequestError, match="positive number of bytes"):
        MemoryBudget(limit)
    budget = MemoryBudget(10)
    with pytest.raises(InvalidRequestError):
        budget.set_limit(limit)
    assert budget.limit == 10


def test_negative_reservation_is_invalid() -> None:
    with pytest.raises(InvalidRequestError, match="negative"):
        MemoryBudget(10).reserve(-1)


def test_concurrent_reservations_never_pass_the_limit() -> None:
    budget = MemoryBudget(50)
    start = threading.Barrier(8)
    granted = [0] * 8

    def worker(slot: int) -> None:
        start.wait()
        for _ in range(2000):
            try:
                budget.reserve(10)
            except MemoryBudgetError:
                continue
            granted[slot] += 1
            budget.release(10)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so unguarded updates would collide
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert budget.used == 0
    assert budget.peak <= 50
    assert sum(granted) + budget.refusals == 8 * 2000


# --- AccountedNumpy ------------------------------------------------------------------------------------------


@pytest.fixture
def xp() -> AccountedNumpy:
    return AccountedNumpy(MemoryBudget(4 * MIB))


MAKERS: dict[str, Callable[[Any], Any]] = {
    "empty": lambda xp: xp.empty((10, 10)),
    "zeros": lambda xp: xp.zeros(100, dtype=np.int8),
    "ones": lambda xp: xp.ones((3, 4), np.float32),
    "full": lambda xp: xp.full((5,), 7),
    "empty_like": lambda xp: xp.empty_like(np.ones((2, 3))),
    "zeros_like": lambda xp: xp.zeros_like([1, 2, 3], dtype=np.float32),
    "ones_like": lambda xp: xp.ones_like(np.ones(4), shape=(8,)),
    "full_like": lambda xp: xp.full_like(np.ones(4, np.int16), 3),
    "array": lambda xp: xp.array(np.arange(10), ndmin=3),
    "array_of_list": lambda xp: xp.array([[1.0, 2.0], [3.0, 4.0]]),
    "asarray_copy": lambda xp: xp.asarray([1, 2, 3]),
    "ascontiguousarray_copy": lambda xp: xp.ascontiguousarray(np.ones((4, 4))[:, ::2]),
    "arange": lambda xp: xp.arange(100),
    "linspace": lambda xp: xp.linspace(0.0, 1.0, 25),
    "eye": lambda xp: xp.eye(3, 5, dtype=np.float32),
    "identity": lambda xp: xp.identity(6),
    "copy": lambda xp: xp.copy(np.ones(9)),
    "concatenate": lambda xp: xp.concatenate([np.ones(3), np.ones(4, np.int8)]),
    "stack": lambda xp: xp.stack((np.ones(3), np.zeros(3))),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_array_creation_is_counted_and_released_on_gc(xp: AccountedNumpy, name: str) -> None:
    array = MAKERS[name](xp)
    assert isinstance(array, np.ndarray)
    assert xp.budget.used == array.nbytes > 0
    del array
    gc.collect()
    assert xp.budget.used == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda xp: xp.zeros((1 << 25, 1 << 22)),
        lambda xp: xp.empty_like(np.ones(1), shape=(1 << 47,)),
        lambda xp: xp.full((1 << 47,), 1.0),
        lambda xp: xp.eye(1 << 24),
        lambda xp: xp.copy(np.broadcast_to(np.ones(1), (1 << 47,))),
        lambda xp: xp.array(np.broadcast_to(np.ones(1), (1 << 47,))),
        lambda xp: xp.concatenate([np.broadcast_to(np.ones(1), (1 << 45,))] * 4),
        lambda xp: xp.stack([np.broadcast_to(np.ones(1), (1 << 45,))] * 4),
    ],
)
def test_refused_before_numpy_allocates(xp: AccountedNumpy, make: Callable[[Any], Any]) -> None:
    # A petabyte is past any address space, so NumPy would fail with its own MemoryError: getting ours (with
    # nothing counted) shows NumPy was never asked.
    with pytest.raises(MemoryBudgetError, match="past its budget of 4MiB"):
        make(xp)
    assert xp.budget.used == 0
    assert xp.budget.refusals == 1


def test_made_then_refused_is_dropped_at_once(xp: AccountedNumpy) -> None:
    kept = xp.zeros(MIB * 3, dtype=np.uint8)
    with pytest.raises(MemoryBudgetError, match="3MiB in use"):
        xp.arange(2 * MIB, dtype=np.uint8)
    with pytest.raises(MemoryBudgetError):
        xp.asarray(list(range(MIB)))
    assert xp.budget.used == kept.nbytes
    assert xp.budget.refusals == 2


def test_views_and_returned_arguments_are_not_counted_twice(xp: AccountedNumpy) -> None:
    base = xp.zeros((100, 100))
    views = [
        base[::2],
        base.T,
        base.reshape(10_000),
        xp.asarray(base),
        xp.asarray(base[1:]),
        xp.ascontiguousarray(base),
        xp.array(base, copy=False),
    ]
    assert xp.budget.used == base.nbytes
    del base
    gc.collect()
    assert xp.budget.used == 80_000  # the views keep the memory alive
    del views
    gc.collect()
    assert xp.budget.used == 0


def test_out_argument_adds_nothing(xp: AccountedNumpy) -> None:
    parts = [xp.ones(3), xp.ones(3)]
    out = xp.empty(6)
    before = xp.budget.used
    result = xp.concatenate(parts, out=out)
    assert result is out
    assert xp.budget.used == before


def test_numpy_errors_pass_through_unchanged(xp: AccountedNumpy) -> None:
    with pytest.raises(ValueError, match="negative"):
        xp.zeros(-3)
    with pytest.raises(TypeError):
        xp.empty((2, 2), dtype="not-a-dtype")
    assert xp.budget.used == 0


def test_everything_else_falls_through_to_numpy(xp: AccountedNumpy) -> None:
    assert xp.float32 is np.float32
    assert xp.ndarray is np.ndarray
    assert xp.add(1, 2) == 3
    assert "linalg" in dir(xp)
    assert xp.zeros.__name__ == "zeros"


@st.composite
def workloads(draw: st.DrawFn) -> list[tuple[str, int]]:
    steps = st.one_of(
        st.tuples(st.sampled_from(["zeros", "ones", "arange", "copy", "stack", "asarray"]), st.integers(0, 400)),
        st.tuples(st.sampled_from(["free", "view"]), st.integers(0, 50)),
    )
    return draw(st.lists(steps, max_size=60))


def _owner(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


@settings(max_examples=150, deadline=None)
@given(workloads(), st.integers(1, 3000))
def test_use_never_passes_the_limit_and_equals_live_bytes(steps: list[tuple[str, int]], limit: int) -> None:
    xp = AccountedNumpy(MemoryBudget(limit))
    live: list[npt.NDArray[Any]] = []
    for op, size in steps:
        try:
            if op == "free" and live:
                live.pop(size % len(live))
            elif op == "view" and live:
                live.append(live[size % len(live)][::2])
            elif op == "copy" and live:
                live.append(xp.copy(live[size % len(live)]))
            elif op == "stack" and live:
                live.append(xp.stack([live[size % len(live)]] * 2))
            elif op == "asarray" and live:
                live.append(xp.asarray(live[size % len(live)], dtype=np.int8))
            elif op in {"zeros", "ones", "arange"}:
                live.append(getattr(xp, op)(size, dtype=np.int16))
        except MemoryBudgetError:
            pass
        owners = {id(_owner(array)): _owner(array).nbytes for array in live}
        assert xp.budget.used == sum(owners.values())
        assert xp.budget.used <= limit


# --- NumpyBackend --------------------------------------------------------------------------------------------


def test_numpy_backend_counts_what_the_workload_makes() -> None:
    backend = NumpyBackend(total_bytes=10 * MIB, budget_bytes=2 * MIB)
    array = backend.xp.ones(MIB, dtype=np.uint8)
    assert backend.device_memory() == (9 * MIB, 10 * MIB)
    assert backend.mem_info() == (MIB, 2 * MIB)
    restored = backend.from_host(np.ones(MIB // 2, dtype=np.uint8))
    assert backend.memory_usage() == MemoryUsage(2 * MIB, MIB + MIB // 2, MIB + MIB // 2, 0)
    with pytest.raises(MemoryBudgetError, match="budget of 2MiB"):
        backend.from_host(np.ones(MIB, dtype=np.uint8))
    assert backend.memory_usage().refusals == 1
    del array, restored
    gc.collect()
    assert backend.device_memory() == (10 * MIB, 10 * MIB)


def test_numpy_backend_budget_defaults_to_the_device_and_resizes() -> None:
    backend = NumpyBackend(total_bytes=4 * MIB)
    assert backend.mem_info() == (4 * MIB, 4 * MIB)
    kept = backend.xp.zeros(3 * MIB, dtype=np.uint8)
    backend.set_memory_limit(2 * MIB)
    assert backend.mem_info() == (0, 2 * MIB)
    with pytest.raises(MemoryBudgetError):
        backend.xp.zeros(1)
    del kept
    gc.collect()
    assert backend.mem_info() == (2 * MIB, 2 * MIB)
    with pytest.raises(InvalidRequestError):
        NumpyBackend(total_bytes=0)


def test_numpy_backend_host_side_is_not_counted() -> None:
    backend = NumpyBackend(total_bytes=MIB)
    array = backend.xp.arange(10)
    host = backend.to_host(array)
    host_into = backend.to_host(array, out=backend.empty_host((10,), np.dtype(array.dtype)))
    assert not np.shares_memory(host, array)
    assert np.array_equal(host_into, array)
    assert backend.budget.used == array.nbytes


# --- PyTorch -------------------------------------------------------------------------------------------------


def _fake_torch(available: bool) -> tuple[types.ModuleType, list[tuple[float, int]]]:
    calls: list[tuple[float, int]] = []
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]  # a stand-in module gets its attributes set
        is_available=lambda: available,
        set_per_process_memory_fraction=lambda fraction, device: calls.append((fraction, device)),
    )
    return torch, calls


def test_torch_budget_applies_when_torch_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    torch, calls = _fake_torch(available=True)
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert apply_torch_budget(20 * GIB, 1, 80 * GIB) is True
    assert apply_torch_budget(100 * GIB, 0, 80 * GIB) is True
    assert calls == [(0.25, 1), (1.0, 0)]


def test_torch_budget_skips_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    torch, calls = _fake_torch(available=False)
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert apply_torch_budget(GIB, 0, 80 * GIB) is False
    assert calls == []


def test_torch_budget_never_imports_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert apply_torch_budget(GIB, 0, 80 * GIB) is False
    assert "torch" not in sys.modules


@pytest.mark.parametrize(("limit", "total"), [(0, GIB), (GIB, 0), (GIB, -1), (1.5, GIB)])
def test_torch_budget_rejects_bad_sizes(limit: Any, total: Any) -> None:
    with pytest.raises(InvalidRequestError):
        apply_torch_budget(limit, 0, total)


# --- CuPy backend against a stand-in cupy ----------------------------------------------------------------------


class FakeOutOfMemoryError(MemoryError):
    pass


class FakeCudaRuntimeError(RuntimeError):
    pass


class FakePool:
    """CuPy's pool as far as the backend relies on it: a limit over acquired bytes, cached blocks included."""

    def __init__(self) -> None:
        self.total = 0
        self.cached = 0
        self.limit = 0
        self.device_full = False

    def malloc(self, size: int) -> tuple[str, int]:
        rounded = -(-size // 512) * 512
        if self.cached >= rounded:
            self.cached -= rounded
            return ("block", rounded)
        if (self.limit and self.total + rounded > self.limit) or self.device_full:
            raise FakeOutOfMemoryError(f"Out of memory allocating {size:,} bytes")
        self.total += rounded
        return ("block", rounded)

    def give_back(self, block: tuple[str, int]) -> None:
        self.cached += block[1]

    def free_all_blocks(self) -> None:
        self.total -= self.cached
        self.cached = 0

    def total_bytes(self) -> int:
        return self.total

    def set_limit(self, size: int) -> None:
        self.limit = size

    def get_limit(self) -> int:
        return self.limit


class FakeCupy:
    """A `cupy` module stand-in: devices with UUIDs, one current device, pools and a global allocator."""

    def __init__(self, uuids: list[bytes], device_total: int = 80 * GIB) -> None:
        self.module = types.ModuleType("cupy")
        self.current = 0
        self.pools: list[FakePool] = []
        self.default_pool = FakePool()
        self.allocator: Any = self.default_pool.malloc
        self.device_free = device_total
        fake = self

        class Device:
            def __init__(self, index: int = 0) -> None:
                self.id = index
                self.mem_info = (fake.device_free, device_total)

            def __enter__(self) -> Device:
                self.previous, fake.current = fake.current, self.id
                return self

            def __exit__(self, *exc: object) -> None:
                fake.current = self.previous

            def synchronize(self) -> None:
                pass

        def count() -> int:
            if not uuids:
                raise FakeCudaRuntimeError("cudaErrorNoDevice")
            return len(uuids)

        def new_pool() -> FakePool:
            fake.pools.append(FakePool())
            return fake.pools[-1]

        def set_allocator(allocator: Any) -> None:
            fake.allocator = allocator

        self.module.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]  # stand-in module attributes
            Device=Device,
            MemoryPool=new_pool,
            set_allocator=set_allocator,
            get_allocator=lambda: fake.allocator,
            memory=types.SimpleNamespace(OutOfMemoryError=FakeOutOfMemoryError),
            runtime=types.SimpleNamespace(
                CUDARuntimeError=FakeCudaRuntimeError,
                getDeviceCount=count,
                getDevice=lambda: fake.current,
                getDeviceProperties=lambda i: {"uuid": uuids[i]},
            ),
        )
        self.module.get_default_memory_pool = lambda: fake.default_pool  # type: ignore[attr-defined]  # as above

    def alloc(self, size: int) -> tuple[str, int]:
        """What CuPy does for every new array: ask the current allocator."""
        block: tuple[str, int] = self.allocator(size)
        return block


GPU0 = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
GPU1 = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
WITH_ZERO = bytes.fromhex("11223300aabbccddeeff001122334455")


@pytest.fixture
def fake_cupy(monkeypatch: pytest.MonkeyPatch) -> FakeCupy:
    fake = FakeCupy([GPU0, GPU1])
    monkeypatch.setitem(sys.modules, "cupy", fake.module)
    monkeypatch.setattr(cupy_backend, "measure_process_bytes", lambda index, uuid=None: None)
    return fake


def test_cupy_pool_is_limited_to_the_budget_less_the_context(fake_cupy: FakeCupy) -> None:
    backend = cupy_backend.CupyBackend(1, 2 * GIB, context_bytes=512 * MIB)
    assert fake_cupy.pools[0].limit == 2 * GIB - 512 * MIB
    assert fake_cupy.allocator == backend._malloc
    assert backend.device_index == 1
    assert backend.outside_pool_bytes == 512 * MIB


def test_cupy_refusal_names_budget_and_use_and_keeps_the_cause(fake_cupy: FakeCupy) -> None:
    backend = cupy_backend.CupyBackend(0, 2 * GIB, context_bytes=512 * MIB)
    fake_cupy.alloc(GIB)
    for expected_count in (1, 2):
        with pytest.raises(MemoryBudgetError) as info:
            fake_cupy.alloc(GIB)
        assert "budget of 2GiB" in str(info.value)
        assert "1.5GiB in use, 512MiB of it the CUDA context" in str(info.value)
        assert isinstance(info.value.__cause__, FakeOutOfMemoryError)
        assert backend.memory_usage() == MemoryUsage(2 * GIB, int(1.5 * GIB), int(1.5 * GIB), expected_count)


def test_cupy_cached_blocks_are_freed_before_refusing(fake_cupy: FakeCupy) -> None:
    cupy_backend.CupyBackend(0, GIB + 512 * MIB, context_bytes=512 * MIB)
    pool = fake_cupy.pools[0]
    pool.give_back(fake_cupy.alloc(512 * MIB))
    fake_cupy.alloc(768 * MIB)  # fits only once the cached 512 MiB go back
    assert pool.total == 768 * MIB


def test_cupy_full_device_within_budget_is_not_a_budget_refusal(fake_cupy: FakeCupy) -> None:
    backend = cupy_backend.CupyBackend(0, 8 * GIB, context_bytes=512 * MIB)
    fake_cupy.pools[0].device_full = True
    with pytest.raises(FakeOutOfMemoryError):
        fake_cupy.alloc(MIB)
    assert backend.memory_usage().refusals == 0


def test_cupy_other_devices_use_the_previous_allocator(fake_cupy: FakeCupy) -> None:
    cupy_backend.CupyBackend(1, GIB, context_bytes=0)
    fake_cupy.alloc(MIB)
    assert (fake_cupy.default_pool.total, fake_cupy.pools[0].total) == (MIB, 0)


def test_cupy_budget_smaller_than_the_context_is_refused(fake_cupy: FakeCupy) -> None:
    with pytest.raises(InvalidRequestError) as info:
        cupy_backend.CupyBackend(0, 256 * MIB)
    message = str(info.value)
    assert "256MiB is smaller than this process's CUDA context" in message
    assert "~512MiB, estimated" in message
    assert "acquire at least 768MiB" in message
    assert fake_cupy.allocator == fake_cupy.default_pool.malloc


def test_cupy_resize_and_mem_info(fake_cupy: FakeCupy) -> None:
    backend = cupy_backend.CupyBackend(0, 4 * GIB, context_bytes=GIB)
    fake_cupy.alloc(2 * GIB)
    assert backend.mem_info() == (GIB, 4 * GIB)
    backend.set_memory_limit(2 * GIB)
    assert backend.mem_info() == (0, 2 * GIB)
    with pytest.raises(MemoryBudgetError, match="budget of 2GiB"):
        fake_cupy.alloc(1)
    with pytest.raises(InvalidRequestError, match="smaller than"):
        backend.set_memory_limit(GIB)
    fake_cupy.device_free = GIB // 2
    backend.set_memory_limit(8 * GIB)
    assert backend.mem_info() == (GIB // 2, 8 * GIB)


def test_cupy_close_and_restore_put_allocators_back(fake_cupy: FakeCupy) -> None:
    previous = fake_cupy.allocator
    backend = cupy_backend.CupyBackend(0, GIB, context_bytes=0)
    pool = fake_cupy.pools[0]
    pool.give_back(fake_cupy.alloc(MIB))
    backend.close()
    assert fake_cupy.allocator == previous
    assert pool.total == 0
    fake_cupy.allocator = None
    cupy_backend.restore_default_allocator()
    assert fake_cupy.allocator == fake_cupy.default_pool.malloc


def test_uuid_text_matches_nvml_form() -> None:
    assert cupy_backend.uuid_from_bytes(GPU0) == "GPU-a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90"
    assert cupy_backend.uuid_from_bytes(GPU0, "MIG").startswith("MIG-a1b2c3d4-")


def test_find_device_by_uuid(fake_cupy: FakeCupy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert cupy_backend.find_cupy_device(cupy_backend.uuid_from_bytes(GPU1)) == 1
    assert cupy_backend.find_cupy_device(" GPU-A1B2C3D4-E5F6-0718-293A-4B5C6D7E8F90 ") == 0
    assert cupy_backend.find_cupy_device(cupy_backend.uuid_from_bytes(WITH_ZERO)) is None
    assert cupy_backend.find_cupy_device("GPU-not-a-uuid") is None


def test_find_device_when_cupy_cuts_the_uuid_at_a_zero_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCupy([GPU0, WITH_ZERO[:3]])
    monkeypatch.setitem(sys.modules, "cupy", fake.module)
    assert cupy_backend.find_cupy_device(cupy_backend.uuid_from_bytes(WITH_ZERO)) == 1


def test_find_mig_device_named_in_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCupy([GPU0])
    monkeypatch.setitem(sys.modules, "cupy", fake.module)
    mig = "MIG-" + cupy_backend.uuid_from_bytes(WITH_ZERO)[4:]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mig)
    assert cupy_backend.find_cupy_device(mig) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-other")
    assert cupy_backend.find_cupy_device(mig) is None


def test_find_device_without_any_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy([]).module)
    assert cupy_backend.find_cupy_device(cupy_backend.uuid_from_bytes(GPU0)) is None


def test_measure_process_bytes_reads_this_pid_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    processes = [
        types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=GIB),
        types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=600 * MIB),
    ]
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", lambda uuid: uuid)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", lambda handle: processes)
    assert cupy_backend.measure_process_bytes(0, "GPU-x") == 600 * MIB
    processes.pop()
    assert cupy_backend.measure_process_bytes(0, "GPU-x") is None


def test_measure_process_bytes_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert cupy_backend.measure_process_bytes(0, "GPU-x") is None

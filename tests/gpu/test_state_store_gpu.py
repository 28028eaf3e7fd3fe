"""StateStore on CuPy: bit-exact checkpoints through pinned memory, and device memory given back on offload."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from vgpu._private.runtime.state_store import StateStore

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

from vgpu._private.runtime.cupy_backend import CupyBackend  # noqa: E402 -- only importable once cupy is known to be

MIB = 1 << 20
BUDGET = 2 << 30

DTYPES = [
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
    np.complex128,
]
SHAPES = [(), (0,), (7,), (3, 5), (2, 3, 4)]


def device_count() -> int:
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except cp.cuda.runtime.CUDARuntimeError:
        return 0


class RecordingCupyBackend(CupyBackend):
    """CupyBackend that keeps the host buffers it hands out, so the test can ask CUDA what memory they are."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host_buffers: list[npt.NDArray[Any]] = []

    def empty_host(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        buffer = super().empty_host(shape, dtype)
        self.host_buffers.append(buffer)
        return buffer


@pytest.fixture
def backend() -> Iterator[RecordingCupyBackend]:
    if device_count() == 0:
        pytest.skip("no CUDA device")
    backend = RecordingCupyBackend(0, BUDGET, context_bytes=0)
    try:
        yield backend
    finally:
        backend.close()


def random_host_array(rng: np.random.Generator, dtype: Any, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """Random bit patterns (NaN payloads and all); bools as 0/1 only, the other bytes are not valid bools."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return np.frombuffer(rng.bytes(size * dtype.itemsize), dtype=dtype).reshape(shape).copy()


def owner(array: Any) -> Any:
    """The array whose allocation `array` views (itself when it owns its memory)."""
    while array.base is not None:
        array = array.base
    return array


def layouts(array: Any) -> dict[str, Any]:
    """The array as registered: C order, transposed (F order) and strided (neither)."""
    out = {"c": array, "transposed": array.T}
    if array.ndim > 0:
        out["strided"] = array[::2]
    return out


@pytest.mark.parametrize("spill", [False, True], ids=["pinned", "spilled"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
def test_round_trip_is_bit_exact(backend: RecordingCupyBackend, tmp_path: Path, dtype: Any, spill: bool) -> None:
    rng = np.random.default_rng(6)
    store = StateStore(backend, spill_dir=tmp_path, host_limit_bytes=0 if spill else None)
    expected: dict[str, npt.NDArray[Any]] = {}
    registered: dict[str, weakref.ref[Any]] = {}
    held: list[Any] = []
    for shape in SHAPES:
        for layout, array in layouts(cp.asarray(random_host_array(rng, dtype, shape))).items():
            name = f"{layout}-{shape}"
            expected[name] = cp.asnumpy(array)
            registered[name] = weakref.ref(store.register(name, array))
            if len(expected) % 2 == 0:
                held.append(array)  # half kept by the workload (and the bases of views with them)
    del array

    report = store.offload()
    assert report.arrays == len(expected)
    held_owners = {id(owner(value)): int(owner(value).nbytes) for value in held}
    assert report.still_referenced_bytes == sum(held_owners.values())
    survivors = {name: ref() for name, ref in registered.items() if ref() is not None}
    assert len(survivors) >= len(held)
    for value in held:
        value.fill(0)  # restore must put the checkpoint back over whatever happened meanwhile
    restored = store.restore(backend)

    assert restored.in_place == len(survivors)
    for name, want in expected.items():
        got = store.state[name]
        assert isinstance(got, cp.ndarray)
        if name in survivors:
            assert got is survivors[name]
        host = cp.asnumpy(got)
        assert host.dtype == want.dtype
        assert host.shape == want.shape
        assert np.ascontiguousarray(host).tobytes() == np.ascontiguousarray(want).tobytes(), name
    assert list(tmp_path.iterdir()) == []
    store.close()


def test_offload_gives_the_memory_back_when_the_store_held_the_only_reference(
    backend: RecordingCupyBackend,
) -> None:
    store = StateStore(backend)
    store.register("weights", cp.ones(64 * MIB // 4, dtype=cp.float32))
    before = backend.memory_usage().used_bytes
    assert before >= 64 * MIB

    report = store.offload()

    assert report.still_referenced_bytes == 0
    assert backend.memory_usage().used_bytes <= before - 64 * MIB
    store.restore(backend)
    assert bool((store.state["weights"] == 1).all())


def test_memory_the_workload_still_references_is_reported(backend: RecordingCupyBackend) -> None:
    store = StateStore(backend)
    weights = store.register("weights", cp.ones(16 * MIB // 4, dtype=cp.float32))

    report = store.offload()

    assert report.still_referenced_bytes == weights.nbytes
    assert backend.memory_usage().used_bytes >= weights.nbytes
    assert store.restore(backend).in_place == 1
    assert store.state["weights"] is weights


def test_host_copies_are_pinned(backend: RecordingCupyBackend) -> None:
    store = StateStore(backend)
    store.register("a", cp.arange(1000, dtype=cp.float64))
    store.register("b", {"m": cp.zeros((64, 64), dtype=cp.float16)})

    store.offload()

    assert len(backend.host_buffers) == 2
    for buffer in backend.host_buffers:
        attributes = cp.cuda.runtime.pointerGetAttributes(buffer.ctypes.data)
        assert attributes.type == cp.cuda.runtime.memoryTypeHost
    store.restore(backend)


def test_host_copies_are_unpinned_after_restore(backend: RecordingCupyBackend) -> None:
    """The pinned buffers are not CuPy's pooled ones, which would stay pinned until the process exits."""
    pinned_pool = cp.get_default_pinned_memory_pool()
    free_blocks = pinned_pool.n_free_blocks()
    store = StateStore(backend)
    weights = store.register("weights", cp.arange(MIB, dtype=cp.float32))
    store.offload()
    pointer = backend.host_buffers[0].ctypes.data
    assert store.restore(backend).in_place == 1  # in place: ndarray.set, no pinned staging buffer of CuPy's
    del backend.host_buffers[:]
    assert pinned_pool.n_free_blocks() == free_blocks
    assert cp.cuda.runtime.pointerGetAttributes(pointer).type != cp.cuda.runtime.memoryTypeHost
    assert bool((weights == cp.arange(MIB, dtype=cp.float32)).all())


def test_restore_on_a_new_backend_for_the_same_device_is_in_place(backend: RecordingCupyBackend) -> None:
    store = StateStore(backend)
    weights = store.register("weights", cp.arange(10, dtype=cp.int32))
    store.offload()
    resumed = CupyBackend(0, BUDGET, context_bytes=0)
    try:
        assert store.restore(resumed).in_place == 1
        assert store.state["weights"] is weights
        assert cp.asnumpy(weights).tolist() == list(range(10))
    finally:
        resumed.close()


def test_restore_on_another_device_makes_new_arrays(backend: RecordingCupyBackend) -> None:
    if device_count() < 2:
        pytest.skip("needs two CUDA devices")
    store = StateStore(backend)
    weights = store.register("weights", cp.arange(10, dtype=cp.int32))
    store.offload()
    resumed = CupyBackend(1, BUDGET, context_bytes=0)
    try:
        assert store.restore(resumed).in_place == 0
        moved = store.state["weights"]
        assert moved is not weights
        assert moved.device.id == 1
        assert cp.asnumpy(moved).tolist() == list(range(10))
    finally:
        resumed.close()

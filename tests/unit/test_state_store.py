"""StateStore on the NumPy backend: bit-exact checkpoints, in-place restores, spilling, and bad input."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict, defaultdict
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, NamedTuple

import hypothesis.extra.numpy as hnp
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpu._private import errors
from vgpu._private.errors import InvalidRequestError, LeaseEndedError, LeaseStateError
from vgpu._private.runtime.numpy_backend import NumpyBackend
from vgpu._private.runtime.state_store import StateStore

GIB = 1 << 30


class Moments(NamedTuple):
    m: Any
    v: Any


class RecordingBackend(NumpyBackend):
    """NumpyBackend that counts host buffers and can fail a chosen device-to-host or host-to-device copy."""

    def __init__(self, *, fail_to_host_at: int | None = None, fail_from_host: bool = False) -> None:
        super().__init__(GIB)
        self.host_buffers: list[npt.NDArray[Any]] = []
        self.to_host_calls = 0
        self.released = 0
        self._fail_to_host_at = fail_to_host_at
        self._fail_from_host = fail_from_host

    def empty_host(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        buffer = super().empty_host(shape, dtype)
        self.host_buffers.append(buffer)
        return buffer

    def to_host(self, array: Any, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        self.to_host_calls += 1
        if self.to_host_calls == self._fail_to_host_at:
            raise OSError("simulated copy failure")
        return super().to_host(array, out)

    def from_host(self, host: npt.NDArray[Any]) -> Any:
        if self._fail_from_host:
            raise MemoryError("simulated out of memory on the new device")
        return super().from_host(host)

    def release_cached(self) -> None:
        self.released += 1


@pytest.fixture
def backend() -> NumpyBackend:
    return NumpyBackend(GIB)


def same_bits(restored: Any, expected: npt.NDArray[Any]) -> bool:
    return (
        isinstance(restored, np.ndarray)
        and restored.dtype == expected.dtype
        and restored.shape == expected.shape
        and np.ascontiguousarray(restored).tobytes() == np.ascontiguousarray(expected).tobytes()
    )


def spill_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.npy"))


# --- bit-exact round trips ------------------------------------------------------------------------------------

RAW_DTYPES = st.one_of(
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(),
)


@st.composite
def device_arrays(draw: st.DrawFn) -> npt.NDArray[Any]:
    """Any bit pattern (NaN payloads, subnormals, -0.0) of any shape, C-ordered, transposed or strided."""
    dtype = draw(st.one_of(RAW_DTYPES, st.just(np.dtype(np.bool_))))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    size = int(np.prod(shape))
    if dtype == np.bool_:
        array = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=dtype).reshape(shape)
    else:
        raw = draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
        array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    layout = draw(st.sampled_from(["c", "transposed", "strided"]))
    if layout == "transposed":
        return array.T
    if layout == "strided" and array.ndim > 0:
        return array[::2]
    return array


@settings(deadline=None, max_examples=150)
@given(array=device_arrays(), spill=st.booleans(), workload_holds=st.booleans())
def test_round_trip_is_bit_exact(array: npt.NDArray[Any], spill: bool, workload_holds: bool) -> None:
    expected = array.copy()
    backend = NumpyBackend(GIB)
    with TemporaryDirectory() as tmp:
        store = StateStore(backend, spill_dir=Path(tmp), host_limit_bytes=0 if spill else None)
        held = store.register("a", array)
        if not workload_holds:
            del array, held
        report = store.offload()
        assert report.arrays == 1
        assert report.device_bytes == expected.nbytes
        assert (report.spilled_bytes, report.host_bytes) == ((expected.nbytes, 0) if spill else (0, expected.nbytes))
        store.restore(backend)
        restored = store.state["a"]
        assert same_bits(restored, expected)
        if workload_holds:
            assert restored is held
        store.close()


def test_nan_payloads_and_signed_zeros_survive(backend: NumpyBackend, tmp_path: Path) -> None:
    bits = np.array([0x7FF8000000000123, 0xFFF0000000000001, 0x8000000000000000, 1], dtype=np.uint64)
    values = bits.view(np.float64)
    store = StateStore(backend, spill_dir=tmp_path, host_limit_bytes=0)
    store.register("h", values.astype(np.float64))
    store.register("f16", np.array([0x7E01, 0x8000, 0x0001], dtype=np.uint16).view(np.float16))
    store.offload()
    store.restore(backend)
    assert store.state["h"].view(np.uint64).tolist() == bits.tolist()
    assert store.state["f16"].view(np.uint16).tolist() == [0x7E01, 0x8000, 0x0001]


# --- trees ----------------------------------------------------------------------------------------------------


def test_trees_are_rebuilt_with_their_types_and_scalars(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    label = "adam-" + "w"  # built at run time, so `is` below checks the store kept this very object
    factory = list
    opt: dict[str, Any] = {
        "moments": Moments(np.arange(4.0), [np.ones((2, 2), np.float32), (np.int8(3), None)]),
        "ordered": OrderedDict(b=np.array(True), a=2.5),
        "by_layer": defaultdict(factory, {"x": [np.zeros(0, np.complex64)]}),
        "meta": (label, b"raw", 7, 1 + 2j, False),
    }
    expected = {
        "m": opt["moments"].m.copy(),
        "w": opt["moments"].v[0].copy(),
        "b": opt["ordered"]["b"].copy(),
    }
    store.register("opt", opt)
    del opt
    store.offload()
    store.restore(backend)

    restored = store.state["opt"]
    assert type(restored) is dict
    assert list(restored) == ["moments", "ordered", "by_layer", "meta"]
    assert isinstance(restored["moments"], Moments)
    assert same_bits(restored["moments"].m, expected["m"])
    assert same_bits(restored["moments"].v[0], expected["w"])
    assert restored["moments"].v[1] == (np.int8(3), None)
    assert type(restored["moments"].v[1][0]) is np.int8
    assert type(restored["ordered"]) is OrderedDict
    assert list(restored["ordered"]) == ["b", "a"]
    assert same_bits(restored["ordered"]["b"], expected["b"])
    assert type(restored["by_layer"]) is defaultdict
    assert restored["by_layer"].default_factory is factory
    assert restored["by_layer"]["x"][0].shape == (0,)
    assert restored["meta"] == (label, b"raw", 7, 1 + 2j, False)
    assert restored["meta"][0] is label


def test_an_array_registered_twice_stays_one_array(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    tied = np.arange(8.0)
    store.register("encoder", {"embed": tied})
    store.register("decoder", [tied, tied])
    assert store.nbytes == tied.nbytes
    del tied
    report = store.offload()
    assert (report.arrays, report.device_bytes) == (1, 64)
    restored = store.restore(backend)
    assert (restored.arrays, restored.bytes) == (1, 64)
    embed = store.state["encoder"]["embed"]
    assert store.state["decoder"][0] is embed
    assert store.state["decoder"][1] is embed


def test_offload_captures_what_the_containers_hold_now(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    opt = store.register("opt", {"m": np.zeros(2)})
    opt["v"] = np.full(3, 7.0)
    opt["step"] = 10
    del opt
    store.offload()
    store.restore(backend)
    assert sorted(store.state["opt"]) == ["m", "step", "v"]
    assert store.state["opt"]["v"].tolist() == [7.0, 7.0, 7.0]
    assert store.state["opt"]["step"] == 10


# --- in place or new ------------------------------------------------------------------------------------------


def test_an_array_the_workload_holds_is_restored_in_place(tmp_path: Path) -> None:
    backend = RecordingBackend()
    store = StateStore(backend, spill_dir=tmp_path)
    weights = store.register("weights", np.arange(12, dtype=np.float32).reshape(3, 4))
    assert weights is store.state["weights"]

    report = store.offload()
    assert report.still_referenced_bytes == weights.nbytes
    assert backend.released == 1
    weights[...] = -1  # whatever happens to it while suspended, restore puts the checkpoint back
    restored = store.restore(backend)

    assert store.state["weights"] is weights
    assert restored.in_place == 1
    assert weights.tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()


def test_in_place_keeps_the_strides_of_a_strided_array(backend: NumpyBackend) -> None:
    base = np.arange(20.0).reshape(4, 5)
    column = base[:, 1]
    store = StateStore(backend)
    store.register("col", column)
    store.offload()
    column[...] = 0
    store.restore(backend)
    assert store.state["col"] is column
    assert column.strides == (40,)
    assert column.tolist() == [1.0, 6.0, 11.0, 16.0]


def test_an_array_nobody_else_holds_is_freed_and_comes_back_new(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    store.register("weights", np.arange(6.0))
    alive = weakref.ref(store.state["weights"])

    report = store.offload()

    assert alive() is None
    assert report.still_referenced_bytes == 0
    restored = store.restore(backend)
    assert restored.in_place == 0
    assert store.state["weights"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_view_the_workload_holds_keeps_the_registered_array_alive(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    weights = store.register("weights", np.arange(100.0))
    head = weights[:2]
    del weights

    report = store.offload()

    assert report.still_referenced_bytes == 800
    assert store.restore(backend).in_place == 1
    assert store.state["weights"] is head.base
    assert head.tolist() == [0.0, 1.0]


def test_a_registered_view_reports_the_whole_buffer_it_keeps(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    buffer = np.zeros(1000, dtype=np.uint8)
    store.register("window", buffer[10:20])

    report = store.offload()

    assert (report.device_bytes, report.still_referenced_bytes) == (10, 1000)


def test_restore_onto_another_backend_makes_new_arrays(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    weights = store.register("weights", np.arange(5, dtype=np.int64))
    store.offload()
    other = NumpyBackend(GIB)

    report = store.restore(other)

    assert report.in_place == 0
    assert store.state["weights"] is not weights
    assert store.state["weights"].tolist() == [0, 1, 2, 3, 4]
    again = store.state["weights"]
    store.offload()
    assert store.restore(other).in_place == 1  # the store now lives on `other`
    assert store.state["weights"] is again


def test_a_read_only_array_is_not_written_in_place(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    frozen = store.register("frozen", np.arange(3.0))
    store.offload()
    frozen.flags.writeable = False
    assert store.restore(backend).in_place == 0
    assert store.state["frozen"] is not frozen
    assert store.state["frozen"].tolist() == [0.0, 1.0, 2.0]


# --- host buffers and spilling --------------------------------------------------------------------------------


def test_arrays_past_the_host_limit_spill_to_disk_until_restored(tmp_path: Path) -> None:
    backend = RecordingBackend()
    store = StateStore(backend, spill_dir=tmp_path, host_limit_bytes=100)
    store.register("big", np.arange(50.0))  # 400 bytes: over the limit
    store.register("small", np.arange(10.0))  # 80 bytes: fits
    store.register("tiny", np.arange(4, dtype=np.int64))  # 32 bytes: no longer fits next to small

    report = store.offload()

    assert (report.host_bytes, report.spilled_bytes) == (80, 432)
    assert [buffer.nbytes for buffer in backend.host_buffers] == [80]
    assert [path.name for path in spill_files(tmp_path)] == ["array-0.npy", "array-2.npy"]
    store.restore(backend)
    assert spill_files(tmp_path) == []
    assert list(tmp_path.iterdir()) == []
    assert store.state["big"].tolist() == list(np.arange(50.0))
    assert store.state["tiny"].tolist() == [0, 1, 2, 3]


def test_close_while_offloaded_removes_the_spill_files(backend: NumpyBackend, tmp_path: Path) -> None:
    store = StateStore(backend, spill_dir=tmp_path, host_limit_bytes=0)
    store.register("w", np.ones(16))
    store.offload()
    assert len(spill_files(tmp_path)) == 1
    store.close()
    assert list(tmp_path.iterdir()) == []
    store.close()  # twice is fine


def test_host_copies_go_into_backend_host_buffers() -> None:
    backend = RecordingBackend()
    store = StateStore(backend)
    store.register("a", np.ones(3))
    store.register("b", [np.zeros((2, 2), np.float16)])
    report = store.offload()
    assert report.spilled_bytes == 0
    assert sorted(buffer.shape for buffer in backend.host_buffers) == [(2, 2), (3,)]


# --- failures leave the state as it was -----------------------------------------------------------------------


def test_a_failed_offload_leaves_the_state_on_the_device(tmp_path: Path) -> None:
    backend = RecordingBackend(fail_to_host_at=2)
    store = StateStore(backend, spill_dir=tmp_path, host_limit_bytes=0)
    first = store.register("first", np.arange(3.0))
    store.register("second", np.arange(4.0))

    with pytest.raises(OSError, match="simulated"):
        store.offload()

    assert not store.offloaded
    assert store.state["first"] is first
    assert list(tmp_path.iterdir()) == []
    assert store.offload().arrays == 2  # and it can be tried again


def test_a_failed_restore_can_be_retried(tmp_path: Path) -> None:
    backend = NumpyBackend(GIB)
    store = StateStore(backend, spill_dir=tmp_path, host_limit_bytes=0)
    store.register("w", np.arange(7, dtype=np.uint16))
    store.offload()

    with pytest.raises(MemoryError):
        store.restore(RecordingBackend(fail_from_host=True))

    assert store.offloaded
    assert len(spill_files(tmp_path)) == 1
    store.restore(backend)
    assert store.state["w"].tolist() == list(range(7))


# --- states and errors ----------------------------------------------------------------------------------------


def test_offloading_twice_is_refused(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    store.register("w", np.ones(2))
    store.offload()
    with pytest.raises(LeaseStateError, match="already offloaded") as caught:
        store.offload()
    assert caught.value.reason == errors.LEASE_SUSPENDED


def test_restore_without_offload_is_refused(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    store.register("w", np.ones(2))
    with pytest.raises(LeaseStateError, match="nothing is offloaded"):
        store.restore(backend)


def test_while_offloaded_values_cannot_be_read_or_registered(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    store.register("w", np.ones(2))
    store.offload()
    with pytest.raises(LeaseStateError, match="suspended"):
        store.state["w"]
    with pytest.raises(LeaseStateError, match="cannot register 'x'"):
        store.register("x", np.ones(2))
    assert "w" in store.state
    assert list(store.state) == ["w"]
    assert len(store.state) == 1
    with pytest.raises(KeyError):
        store.state["x"]


def test_unregister_while_offloaded_drops_the_host_copy(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    store.register("keep", np.ones(2))
    store.register("drop", np.ones(3))
    store.offload()
    store.unregister("drop")
    assert store.nbytes == 16
    report = store.restore(backend)
    assert (report.arrays, report.bytes) == (1, 16)
    assert list(store.state) == ["keep"]
    with pytest.raises(InvalidRequestError, match=r"no state is registered as 'drop'; registered: \['keep'\]"):
        store.unregister("drop")


def test_re_registering_replaces(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    store.register("w", np.ones(2))
    replacement = np.zeros(3)
    assert store.register("w", replacement) is replacement
    assert store.state["w"] is replacement
    assert store.nbytes == 24


def test_a_closed_store_is_refused(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    store.register("w", np.ones(2))
    store.close()
    assert len(store.state) == 0
    with pytest.raises(LeaseEndedError, match="closed"):
        store.register("w", np.ones(2))
    with pytest.raises(LeaseEndedError):
        store.offload()


def test_an_empty_store_offloads_and_restores(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    assert store.offload().arrays == 0
    assert store.restore(backend).arrays == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"m": [1, 2, {3}]}, r"state 'opt'\['m'\]\[2\] is a set, not a numpy array: register numpy arrays"),
        (Moments(np.ones(1), object()), r"state 'opt'\.v is an object, not a numpy array"),
        ([np.array([None], dtype=object)], r"state 'opt'\[0\] is a numpy\.ndarray of dtype object, not a numpy"),
        ({1: np.ones(1)}, r"state 'opt' has the key 1 \(an int\): state dict keys must be str"),
        ({"m": 1, "step": None}, r"state 'opt' holds no numpy array"),
        ([], r"state 'opt' holds no numpy array"),
        (np.float32(1.0), r"state 'opt' holds no numpy array"),
        (bytearray(b"x"), r"state 'opt' is a bytearray, not a numpy array"),
    ],
)
def test_bad_values_are_refused_with_their_path(backend: NumpyBackend, value: object, message: str) -> None:
    store = StateStore(backend)
    with pytest.raises(InvalidRequestError, match=message):
        store.register("opt", value)
    assert "opt" not in store.state


def test_a_foreign_tensor_is_named_by_its_type(backend: NumpyBackend) -> None:
    Tensor = type("Tensor", (), {"__module__": "torch"})  # noqa: N806 -- stands in for torch.Tensor
    store = StateStore(backend)
    with pytest.raises(InvalidRequestError, match=r"state 'opt'\['m'\]\[2\] is a torch\.Tensor, not a numpy array"):
        store.register("opt", {"m": [np.ones(1), 0, Tensor()]})


def test_container_subclasses_and_cycles_are_refused(backend: NumpyBackend) -> None:
    class Config(dict[str, Any]):
        pass

    store = StateStore(backend)
    with pytest.raises(InvalidRequestError, match=r"state 'c' is a .*Config, not a numpy array"):
        store.register("c", Config(w=np.ones(1)))
    loop: list[Any] = [np.ones(1)]
    loop.append(loop)
    with pytest.raises(InvalidRequestError, match=r"state 'loop'\[1\] contains itself"):
        store.register("loop", loop)


def test_a_failed_re_register_keeps_the_old_value(backend: NumpyBackend) -> None:
    store = StateStore(backend)
    old = store.register("w", np.ones(2))
    with pytest.raises(InvalidRequestError):
        store.register("w", "not an array")
    assert store.state["w"] is old


@pytest.mark.parametrize("name", ["", 3, None])
def test_names_are_non_empty_strings(backend: NumpyBackend, name: Any) -> None:
    with pytest.raises(InvalidRequestError, match="state names are non-empty strings"):
        StateStore(backend).register(name, np.ones(1))


@pytest.mark.parametrize("limit", [-1, True, 1.5])
def test_host_limit_must_be_a_byte_count(backend: NumpyBackend, limit: Any) -> None:
    with pytest.raises(InvalidRequestError, match="host_limit_bytes"):
        StateStore(backend, host_limit_bytes=limit)


def test_spill_dir_must_exist(backend: NumpyBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="not a directory"):
        StateStore(backend, spill_dir=tmp_path / "missing")


# --- concurrency ----------------------------------------------------------------------------------------------


class GatedBackend(NumpyBackend):
    """Blocks in `synchronize` (inside offload, under the store's lock) until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(GIB)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def synchronize(self) -> None:
        self.entered.set()
        assert self.gate.wait(timeout=30)


def test_register_waits_for_an_offload_in_progress() -> None:
    backend = GatedBackend()
    store = StateStore(backend)
    store.register("w", np.ones(4))
    outcome: list[BaseException | None] = []

    def register_late() -> None:
        try:
            store.register("late", np.ones(1))
            outcome.append(None)
        except LeaseStateError as exc:
            outcome.append(exc)

    offloader = threading.Thread(target=store.offload)
    registrar = threading.Thread(target=register_late)
    offloader.start()
    try:
        assert backend.entered.wait(timeout=30)
        registrar.start()
        registrar.join(timeout=0.2)
        assert registrar.is_alive()  # blocked on the lock, not registering into a half-taken checkpoint
    finally:
        backend.gate.set()
        offloader.join(timeout=30)
        if registrar.ident is not None:
            registrar.join(timeout=30)
    assert isinstance(outcome[0], LeaseStateError)
    assert list(store.state) == ["w"]

"""A lease's registered state, and its checkpoint: offload to the host on preemption, restore on resume.

`lease.register` / `lease.checkpoint` / `lease.state` delegate here. Offloading copies every registered array
to host memory (or disk), then drops the store's references so the device memory can go back; restoring copies
the bytes back, into the workload's own array objects where they survived on the same device, so a training
loop holding `w` carries on unaware.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vgpu._private import errors
from vgpu._private.errors import InvalidRequestError, LeaseEndedError, LeaseStateError
from vgpu._private.runtime.array_backend import ArrayBackend
from vgpu._private.runtime.host_copies import HostCopies
from vgpu._private.runtime.state_tree import ArrayTable, Tree, array_slots, describe_type, flatten, rebuild


@dataclass(frozen=True)
class OffloadReport:
    """What `offload` did: `still_referenced_bytes` is device memory the workload kept alive (worth a warning)."""

    arrays: int
    device_bytes: int
    host_bytes: int
    spilled_bytes: int
    still_referenced_bytes: int
    seconds: float


@dataclass(frozen=True)
class RestoreReport:
    """What `restore` did: `in_place` arrays were written back into the workload's surviving objects."""

    arrays: int
    bytes: int
    in_place: int
    seconds: float


@dataclass(frozen=True)
class _OffloadedArray:
    """What the store remembers of a device array it let go of."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    nbytes: int
    array: Callable[[], Any]
    """Weak reference to the array itself: restored into in place while it is alive."""
    owner: Callable[[], Any]
    """Weak reference to the array owning its memory (itself, or the base it is a view of)."""


@dataclass(frozen=True)
class _Suspension:
    backend: ArrayBackend
    trees: dict[str, Tree]
    arrays: list[_OffloadedArray]
    copies: HostCopies


class StateStore:
    """Registered arrays (and dict/list/tuple trees of them) that survive a preemption bit for bit.

    `register` may race with `offload`/`restore` (the workload registers while the lease's thread
    checkpoints), so every operation holds one lock. While offloaded, values cannot be read or registered.
    Restored arrays are new objects unless restored in place (see `restore`); new ones are C-contiguous.
    """

    def __init__(
        self, backend: ArrayBackend, *, spill_dir: Path | None = None, host_limit_bytes: int | None = None
    ) -> None:
        if host_limit_bytes is not None and (
            isinstance(host_limit_bytes, bool) or not isinstance(host_limit_bytes, int) or host_limit_bytes < 0
        ):
            raise InvalidRequestError(
                f"host_limit_bytes must be a number of bytes >= 0 or None (no limit), not {host_limit_bytes!r}"
            )
        if spill_dir is not None and not Path(spill_dir).is_dir():
            raise InvalidRequestError(f"spill_dir {str(spill_dir)!r} is not a directory: create it or pass None")
        self._backend = backend
        self._spill_root = None if spill_dir is None else Path(spill_dir)
        self._host_limit = host_limit_bytes
        self._lock = threading.RLock()  # re-entrant: gc.collect() in offload may run finalizers that call back
        self._values: dict[str, Any] = {}
        self._suspension: _Suspension | None = None
        self._closed = False
        self.state: Mapping[str, Any] = StateView(self)
        """Read-only view: name -> current value (raises LeaseStateError while offloaded)."""

    @property
    def offloaded(self) -> bool:
        """Whether the state is on the host (between `offload` and `restore`)."""
        return self._suspension is not None

    @property
    def nbytes(self) -> int:
        """Device bytes of the registered arrays (an array registered twice counts once)."""
        with self._lock:
            if self._suspension is not None:
                return sum(self._suspension.arrays[index].nbytes for index in _slots_in_use(self._suspension))
            table = ArrayTable()
            for name, value in self._values.items():
                flatten(name, value, self._backend, table)
            return table.nbytes

    def register(self, name: str, value: Any) -> Any:
        """Keep `value` (a device array or a tree of them) across preemptions under `name`; returns `value`."""
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"state names are non-empty strings, not {name!r} ({describe_type(name)})")
        with self._lock:
            self._check_usable(f"register {name!r}")
            flatten(name, value, self._backend, ArrayTable())
            self._values[name] = value
        return value

    def unregister(self, name: str) -> None:
        """Forget `name` (its host copy too, when offloaded)."""
        with self._lock:
            self._check_open()
            names = self._suspension.trees if self._suspension is not None else self._values
            if name not in names:
                raise InvalidRequestError(f"no state is registered as {name!r}; registered: {sorted(names)}")
            del names[name]

    def offload(self) -> OffloadReport:
        """Copy every registered array to the host and let go of the device copies; raises leaving all as it was.

        After the store drops its references it collects garbage once and empties the backend's cache;
        memory of arrays the workload still references stays allocated and is counted in the report.
        """
        started = time.perf_counter()
        with self._lock:
            self._check_open()
            if self._suspension is not None:
                raise LeaseStateError(
                    "the state is already offloaded: restore() it before offloading again",
                    reason=errors.LEASE_SUSPENDED,
                )
            suspension = self._capture()
            self._values = {}
            self._suspension = suspension
            if any(entry.owner() is not None for entry in suspension.arrays):
                gc.collect()  # only arrays held in reference cycles are left to free: a full pass is needed
            suspension.backend.release_cached()
            kept = _still_referenced_bytes(suspension.arrays)
        return OffloadReport(
            arrays=len(suspension.arrays),
            device_bytes=sum(array.nbytes for array in suspension.arrays),
            host_bytes=suspension.copies.host_bytes,
            spilled_bytes=suspension.copies.spilled_bytes,
            still_referenced_bytes=kept,
            seconds=time.perf_counter() - started,
        )

    def restore(self, backend: ArrayBackend) -> RestoreReport:
        """Bring the offloaded state back on `backend` (the old one, or one for the device the lease resumed on).

        An array the workload kept alive is written back in place when it fits (same shape and dtype, writeable)
        and lives where `backend` computes: with `backend.device_index` set (CuPy: the CUDA device ordinal),
        when `array.device.id` equals it; without one (NumPy), when `backend` is the backend it was offloaded
        from. Otherwise `backend.from_host` makes a new array. Trees are rebuilt as new containers of the same
        types around the restored leaves. On failure the state stays offloaded and restore may be retried.
        """
        started = time.perf_counter()
        with self._lock:
            self._check_open()
            suspension = self._suspension
            if suspension is None:
                raise LeaseStateError("nothing is offloaded: restore() follows offload()")
            slots = _slots_in_use(suspension)
            restored: list[Any] = [None] * len(suspension.arrays)
            in_place = 0
            for index in slots:
                offloaded = suspension.arrays[index]
                target = offloaded.array()
                if target is not None and _fits_in_place(target, offloaded, suspension.backend, backend):
                    _copy_into(target, suspension.copies.load(index), backend)
                    restored[index] = target
                    in_place += 1
                else:
                    restored[index] = backend.from_host(suspension.copies.load(index))
                del target
            backend.synchronize()  # host buffers must outlive asynchronous uploads from them
            self._values = {name: rebuild(tree, restored) for name, tree in suspension.trees.items()}
            self._backend = backend
            self._suspension = None
            suspension.copies.close()
        return RestoreReport(
            arrays=len(slots),
            bytes=sum(suspension.arrays[index].nbytes for index in slots),
            in_place=in_place,
            seconds=time.perf_counter() - started,
        )

    def close(self) -> None:
        """Drop every value and host copy and remove the spill files; the store refuses use afterwards."""
        with self._lock:
            self._closed = True
            self._values = {}
            if self._suspension is not None:
                self._suspension.copies.close()
                self._suspension = None

    def _capture(self) -> _Suspension:
        """Host copies and weak references of the current values (its frame holds the last strong ones)."""
        table = ArrayTable()
        trees = {name: flatten(name, value, self._backend, table) for name, value in self._values.items()}
        copies = HostCopies.take(
            self._backend, table.arrays, host_limit_bytes=self._host_limit, spill_root=self._spill_root
        )
        arrays = [
            _OffloadedArray(
                tuple(array.shape), np.dtype(array.dtype), int(array.nbytes), _weak(array), _weak(self._owner(array))
            )
            for array in table.arrays
        ]
        return _Suspension(self._backend, trees, arrays, copies)

    def _owner(self, array: Any) -> Any:
        while getattr(array, "base", None) is not None and self._backend.is_array(array.base):
            array = array.base
        return array

    def _get(self, name: str) -> Any:
        with self._lock:
            if self._suspension is not None and name in self._suspension.trees:
                raise LeaseStateError(
                    f"state {name!r} is in host memory while the lease is suspended: read it after it resumes",
                    reason=errors.LEASE_SUSPENDED,
                )
            return self._values[name]

    def _names(self) -> list[str]:
        with self._lock:
            return list(self._suspension.trees if self._suspension is not None else self._values)

    def _check_open(self) -> None:
        if self._closed:
            raise LeaseEndedError("the lease's state store is closed: its lease has ended")

    def _check_usable(self, action: str) -> None:
        self._check_open()
        if self._suspension is not None:
            raise LeaseStateError(
                f"cannot {action} while the lease is suspended (its state is offloaded): do it after it resumes",
                reason=errors.LEASE_SUSPENDED,
            )


class StateView(Mapping[str, Any]):
    """`lease.state`: a live, read-only view of a StateStore's values."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __getitem__(self, name: str) -> Any:
        return self._store._get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._store._names())

    def __len__(self) -> int:
        return len(self._store._names())

    def __contains__(self, name: object) -> bool:
        return name in self._store._names()


def _slots_in_use(suspension: _Suspension) -> list[int]:
    """Slots still named by a tree (unregistering while offloaded may orphan some)."""
    return sorted(set().union(*(array_slots(tree) for tree in suspension.trees.values())))


def _weak(value: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(value)
    except TypeError:  # an array type without weak references: treat it as gone
        return lambda: None


def _still_referenced_bytes(arrays: list[_OffloadedArray]) -> int:
    owners = {id(owner): int(owner.nbytes) for array in arrays if (owner := array.owner()) is not None}
    return sum(owners.values())


def _fits_in_place(target: Any, offloaded: _OffloadedArray, old: ArrayBackend, new: ArrayBackend) -> bool:
    if not new.is_array(target) or tuple(target.shape) != offloaded.shape or target.dtype != offloaded.dtype:
        return False
    if not getattr(target.flags, "writeable", True):
        return False
    device_index = getattr(new, "device_index", None)
    if device_index is None:
        return new is old
    return bool(getattr(getattr(target, "device", None), "id", None) == device_index)


def _copy_into(target: Any, host: npt.NDArray[Any], backend: ArrayBackend) -> None:
    """Write `host` into the device array `target` (NumPy: copyto; CuPy: set, or a device copy if strided)."""
    if isinstance(target, np.ndarray):
        np.copyto(target, host, casting="no")
    elif target.flags.c_contiguous or target.flags.f_contiguous:
        target.set(host)
    else:
        with target.device:
            target[...] = backend.from_host(host)

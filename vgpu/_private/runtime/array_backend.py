"""The array library a lease's runtime drives: CuPy on a real GPU, NumPy (a simulated device) without one.

The runtime's parts (memory budget, compute throttle, state store, preemptible kernels) only talk to this
interface, so every rule they enforce is exercised in CI on NumPy and on a GPU with CuPy alike.
"""

from __future__ import annotations

import abc
import time
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from vgpu._private.runtime.memory_budget import MemoryUsage


class DeviceTimer(Protocol):
    """Measures device time between its start and `stop()` (CUDA events on a GPU, wall time on NumPy)."""

    def stop(self) -> float:
        """Seconds of device time since the timer started; synchronises with the work measured."""
        ...


class ArrayBackend(abc.ABC):
    """What the runtime needs from an array library; one instance per lease runtime."""

    name: str
    """"cupy" or "numpy": what `lease.runtime.backend` reports."""

    @property
    @abc.abstractmethod
    def xp(self) -> Any:
        """The array module the workload should use (`cupy`, or NumPy's accounted namespace)."""

    @abc.abstractmethod
    def is_array(self, value: object) -> bool:
        """Whether `value` is a device array of this backend (what `register` accepts as a leaf)."""

    @abc.abstractmethod
    def to_host(self, array: Any, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        """Copy a device array into host memory (into `out` when given, e.g. a pinned buffer) and return it."""

    @abc.abstractmethod
    def from_host(self, host: npt.NDArray[Any]) -> Any:
        """A new device array holding a copy of `host` (same shape, dtype and bytes)."""

    @abc.abstractmethod
    def empty_host(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """A host buffer for device-to-host copies: pinned (page-locked) memory where the backend has it."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait until the work queued on the device has finished."""

    @abc.abstractmethod
    def start_timer(self) -> DeviceTimer:
        """Start measuring device time on the current stream."""

    @abc.abstractmethod
    def device_memory(self) -> tuple[int, int]:
        """The device's own (free, total) bytes, before any budget is applied."""

    @abc.abstractmethod
    def memory_usage(self) -> MemoryUsage:
        """The lease's memory budget, use, peak and refused allocations on this device."""

    @abc.abstractmethod
    def mem_info(self) -> tuple[int, int]:
        """(free, total) as the workload should see them: clamped to the budget, never negative."""

    @abc.abstractmethod
    def set_memory_limit(self, limit_bytes: int) -> None:
        """Change the budget (the slice was resized); below current use, new allocations are refused."""

    @abc.abstractmethod
    def release_cached(self) -> None:
        """Give memory the backend caches but no array uses back to the device (after a checkpoint)."""

    def close(self) -> None:  # noqa: B027 -- optional hook: backends without process-wide state need nothing
        """Undo what the backend changed in the process (CuPy: the allocator); the runtime is done with it."""


class WallTimer:
    """A DeviceTimer that counts wall time: NumPy work runs synchronously on the host."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> float:
        """Seconds since the timer was made."""
        return time.perf_counter() - self._start

"""The NumPy backend: the runtime without a GPU, host memory standing in for a device of a given size.

Arrays the workload makes through `xp` are counted against the lease's memory budget (see numpy_memory for
what the simulation counts and what it cannot), and the simulated device's free memory is what they leave.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from vgpu._private.runtime.array_backend import ArrayBackend, DeviceTimer, WallTimer
from vgpu._private.runtime.memory_budget import MemoryBudget, MemoryUsage, check_limit
from vgpu._private.runtime.numpy_memory import AccountedNumpy


class NumpyBackend(ArrayBackend):
    """Arrays are NumPy arrays; device time is wall time; the device has `total_bytes` of memory.

    The lease may use `budget_bytes` of it (the whole simulated device when not given).
    """

    name = "numpy"

    def __init__(self, total_bytes: int, budget_bytes: int | None = None) -> None:
        self._total = check_limit(total_bytes)
        self._budget = MemoryBudget(self._total if budget_bytes is None else budget_bytes)
        self._xp = AccountedNumpy(self._budget)

    @property
    def xp(self) -> Any:
        """NumPy, with array creation counted against the lease's budget."""
        return self._xp

    @property
    def budget(self) -> MemoryBudget:
        """The lease's memory budget the arrays are counted against."""
        return self._budget

    def memory_usage(self) -> MemoryUsage:
        """Limit, use, peak and refusals, for reporting to vgpud."""
        return self._budget.usage()

    def mem_info(self) -> tuple[int, int]:
        """(free, total) as the workload should see them: the simulated device clamped to the budget."""
        free, total = self.device_memory()
        return self._budget.mem_info(free, total)

    def set_memory_limit(self, limit_bytes: int) -> None:
        """Resize the budget (an elastic lease changed size); below current use, new arrays are refused."""
        self._budget.set_limit(limit_bytes)

    def is_array(self, value: object) -> bool:
        """NumPy arrays (not scalars or matrices of objects)."""
        return isinstance(value, np.ndarray) and value.dtype != np.dtype(object)

    def to_host(self, array: Any, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        """A copy (the 'device' is host memory too, but the copy must not alias the array)."""
        if out is None:
            return np.array(array, copy=True)
        np.copyto(out, array)
        return out

    def from_host(self, host: npt.NDArray[Any]) -> Any:
        """A new array holding a copy of `host`, counted against the budget like any other."""
        return self._xp.array(host, copy=True)

    def empty_host(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """Plain host memory (there is nothing to pin)."""
        return np.empty(shape, dtype=dtype)

    def synchronize(self) -> None:
        """Nothing to wait for: NumPy runs synchronously."""

    def start_timer(self) -> DeviceTimer:
        """Wall time stands in for GPU time."""
        return WallTimer()

    def device_memory(self) -> tuple[int, int]:
        """The simulated device: (total minus the bytes counted on the budget, total)."""
        return max(0, self._total - self._budget.used), self._total

    def release_cached(self) -> None:
        """NumPy caches nothing."""

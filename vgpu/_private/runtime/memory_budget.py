"""A lease's memory budget as the workload sees it: reservations that refuse past the limit, with clear errors.

Both backends speak in these terms: NumPy reserves on a `MemoryBudget` before it allocates; CuPy lets its
limited memory pool refuse and words the refusal with `refusal_error`. Either way the workload gets a
`MemoryBudgetError` that names the budget and the use, and `mem_info` clamps free/total to the budget.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from vgpu._private.errors import InvalidRequestError, MemoryBudgetError
from vgpu._private.units import format_memory


@dataclass(frozen=True)
class MemoryUsage:
    """What a lease's runtime reports to vgpud about its memory: limit, use now, high-water mark, refusals."""

    limit_bytes: int
    used_bytes: int
    peak_bytes: int
    refusals: int


def check_limit(limit_bytes: object) -> int:
    """`limit_bytes` as a budget in bytes; InvalidRequestError unless it is a positive whole number."""
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes <= 0:
        raise InvalidRequestError(
            f"memory budget must be a positive number of bytes, got {limit_bytes!r}: acquire memory='8GiB' or similar"
        )
    return limit_bytes


def refusal_error(nbytes: int, used: int, limit: int, *, detail: str = "") -> MemoryBudgetError:
    """The error a refused allocation raises: what was asked, where it would take the lease, and what to do."""
    extra = f", {detail}" if detail else ""
    return MemoryBudgetError(
        f"allocating {format_memory(nbytes)} would take lease memory to {format_memory(used + nbytes)}, "
        f"past its budget of {format_memory(limit)} ({format_memory(used)} in use{extra}): "
        "free arrays or acquire more memory="
    )


def workload_mem_info(limit: int, used: int, device_free: int, device_total: int) -> tuple[int, int]:
    """(free, total) as the workload should see them: the device's numbers clamped to the budget, never negative."""
    total = max(0, min(limit, device_total))
    free = max(0, min(limit - used, device_free, total))
    return free, total


class MemoryBudget:
    """Bytes reserved against a limit, shared by every thread of the workload.

    A refused reservation changes nothing but the refusal count, so a workload that keeps allocating
    after a refusal keeps getting the same clear error while the count it reports keeps rising.
    """

    def __init__(self, limit_bytes: int) -> None:
        self._limit = check_limit(limit_bytes)
        self._used = 0
        self._peak = 0
        self._refusals = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """The budget in bytes."""
        return self._limit

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    @property
    def peak(self) -> int:
        """The most bytes ever reserved at once."""
        return self._peak

    @property
    def refusals(self) -> int:
        """How many reservations were refused so far."""
        return self._refusals

    def reserve(self, nbytes: int) -> None:
        """Count `nbytes` against the budget, or raise MemoryBudgetError and count nothing."""
        if nbytes < 0:
            raise InvalidRequestError(f"cannot reserve a negative size ({nbytes} bytes)")
        with self._lock:
            if self._used + nbytes > self._limit:
                self._refusals += 1
                raise refusal_error(nbytes, self._used, self._limit)
            self._used += nbytes
            self._peak = max(self._peak, self._used)

    def release(self, nbytes: int) -> None:
        """Give `nbytes` back; use never goes below zero, whatever the caller hands back."""
        with self._lock:
            self._used = max(0, self._used - max(0, nbytes))

    def set_limit(self, limit_bytes: int) -> None:
        """Resize the budget; below current use, later reservations fail until enough is released."""
        limit = check_limit(limit_bytes)
        with self._lock:
            self._limit = limit

    def mem_info(self, device_free: int, device_total: int) -> tuple[int, int]:
        """(free, total) for the workload, given the device's own numbers."""
        with self._lock:
            return workload_mem_info(self._limit, self._used, device_free, device_total)

    def usage(self) -> MemoryUsage:
        """A consistent snapshot of limit, use, peak and refusals, for reporting to vgpud."""
        with self._lock:
            return MemoryUsage(self._limit, self._used, self._peak, self._refusals)

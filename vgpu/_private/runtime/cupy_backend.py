"""The CuPy backend: a lease's memory budget enforced by a limited CuPy memory pool on its GPU.

The budget covers everything the process holds on the device. What sits outside the pool (the CUDA context,
loaded modules, other libraries) is measured once at start through NVML's per-process count, or, where NVML
cannot say (no permission, another PID namespace, MIG without per-process data), taken as
`CONTEXT_ESTIMATE_BYTES`; the pool gets the rest. CuPy is imported lazily, so NumPy-only use never loads it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import pynvml

from vgpu._private.errors import InvalidRequestError
from vgpu._private.runtime.array_backend import ArrayBackend, DeviceTimer
from vgpu._private.runtime.memory_budget import MemoryUsage, check_limit, refusal_error, workload_mem_info
from vgpu._private.units import format_memory

CONTEXT_ESTIMATE_BYTES = 512 * 1024**2
"""Assumed footprint of a CUDA context where NVML cannot measure it: a CUDA 12 or 13 context with lazy module
loading takes roughly 300-500 MiB on current data-centre GPUs, so this errs on the side of a smaller pool."""

_ALLOCATION_UNIT = 512
"""CuPy's pool rounds every request up to a multiple of this many bytes."""
_UUID_BYTES = 16


def _cupy() -> Any:
    """The cupy module, imported on first use of the GPU path."""
    import cupy  # noqa: PLC0415 -- CuPy is imported only on the GPU path, so NumPy-only use never needs it

    return cupy


def uuid_from_bytes(raw: bytes, prefix: str = "GPU") -> str:
    """NVML's text form of a 16-byte device UUID, e.g. 'GPU-a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90'."""
    text = raw.hex()
    return f"{prefix}-{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"


def _uuid_bytes(uuid: str) -> bytes | None:
    """The 16 bytes behind 'GPU-…' or 'MIG-…' (None for other forms, e.g. the old 'MIG-GPU-…/gi/ci')."""
    text = uuid.strip()
    if text[:4] not in ("GPU-", "MIG-"):
        return None
    try:
        raw = bytes.fromhex(text[4:].replace("-", ""))
    except ValueError:
        return None
    return raw if len(raw) == _UUID_BYTES else None


def _reported_matches(reported: bytes, wanted: bytes) -> bool:
    """Whether CuPy's properties["uuid"] is `wanted`, allowing for its cut at the first zero byte."""
    if len(reported) >= _UUID_BYTES:
        return reported[:_UUID_BYTES] == wanted
    return wanted.startswith(reported) and wanted[len(reported)] == 0


def find_cupy_device(uuid: str) -> int | None:
    """The CuPy device index of the GPU or MIG instance `uuid`, or None when this process cannot see it.

    Indices are those CUDA gives after CUDA_VISIBLE_DEVICES; a process pointed at one MIG instance sees it as 0.
    Needs CuPy (ImportError without it): callers without CuPy use the NumPy backend instead.
    """
    cupy = _cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        reported = [bytes(cupy.cuda.runtime.getDeviceProperties(i).get("uuid", b"")) for i in range(count)]
    except cupy.cuda.runtime.CUDARuntimeError:
        return None
    wanted = _uuid_bytes(uuid)
    if wanted is not None:
        exact = [i for i, raw in enumerate(reported) if raw[:_UUID_BYTES] == wanted]
        cut = [i for i, raw in enumerate(reported) if _reported_matches(raw, wanted)]
        if exact or len(cut) == 1:
            return (exact or cut)[0]
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    if uuid.strip().startswith("MIG-") and visible[:1] == [uuid.strip()] and count > 0:
        return 0
    return None


def measure_process_bytes(device_index: int, gpu_uuid: str | None = None) -> int | None:
    """This process's memory on the device as NVML counts it (context included), or None where NVML cannot say."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        if gpu_uuid is not None:
            handle = pynvml.nvmlDeviceGetHandleByUUID(gpu_uuid)
        else:
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(_cupy().cuda.runtime.deviceGetPCIBusId(device_index))
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError):  # the latter: a driver older than the call
        return None
    finally:
        pynvml.nvmlShutdown()
    for process in processes:
        if process.pid == os.getpid() and process.usedGpuMemory is not None:
            return int(process.usedGpuMemory)
    return None


def restore_default_allocator() -> None:
    """Put CuPy's own default memory pool back as the allocator of every thread without a local one."""
    cupy = _cupy()
    cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)


class CudaEventTimer:
    """A DeviceTimer from a pair of CUDA events on one device's current stream: device time, not host time.

    Both events are made and recorded on `device` (the current device when None), whatever device is current
    when `stop()` runs: a suspend stops the timer from the lease's thread, whose current device may be another,
    and CUDA refuses to record an event on a stream of a device other than its own.
    """

    def __init__(self, device: int | None = None) -> None:
        self._cupy = cupy = _cupy()
        self._device = cupy.cuda.Device(device)
        with self._device:
            self._start = cupy.cuda.Event()
            self._start.record()

    def stop(self) -> float:
        """Seconds of device time between start and now on the current stream; waits for that work to finish."""
        with self._device:
            end = self._cupy.cuda.Event()
            end.record()
            end.synchronize()
            return float(self._cupy.cuda.get_elapsed_time(self._start, end)) / 1000.0


class CupyBackend(ArrayBackend):
    """CuPy on one GPU, with every CuPy allocation on it drawn from a pool limited to the lease's budget.

    Args:
        device_index: the CuPy (CUDA runtime) index of the lease's GPU; see `find_cupy_device`.
        budget_bytes: the lease's memory on that GPU, CUDA context included.
        gpu_uuid: the slice's NVML UUID, to measure the context; by PCI bus id when not given.
        context_bytes: what the process holds outside the pool, when the caller knows better than NVML.
    """

    name = "cupy"

    def __init__(
        self, device_index: int, budget_bytes: int, *, gpu_uuid: str | None = None, context_bytes: int | None = None
    ) -> None:
        self._cupy = cupy = _cupy()
        self._device = device_index
        self._lock = threading.Lock()
        self._refusals = 0
        self._peak = 0
        self._closed = False
        budget = check_limit(budget_bytes)
        with cupy.cuda.Device(device_index) as device:
            _ = device.mem_info  # makes the CUDA context, so that NVML counts it
            cupy.get_default_memory_pool().free_all_blocks()
            measured = measure_process_bytes(device_index, gpu_uuid) if context_bytes is None else context_bytes
            self._estimated = measured is None
            self._outside = CONTEXT_ESTIMATE_BYTES if measured is None else max(0, int(measured))
            self._pool = cupy.cuda.MemoryPool()
        self._budget = budget
        self._limit_pool(budget)
        self._previous = cupy.cuda.get_allocator()
        cupy.cuda.set_allocator(self._malloc)

    @property
    def xp(self) -> Any:
        """CuPy itself: its allocations are drawn from the budgeted pool."""
        return self._cupy

    @property
    def device_index(self) -> int:
        """The CUDA device ordinal arrays live on."""
        return self._device

    @property
    def outside_pool_bytes(self) -> int:
        """What the process holds on the GPU outside the pool (CUDA context and other libraries), as measured."""
        return self._outside

    def is_array(self, value: object) -> bool:
        """CuPy arrays."""
        return isinstance(value, self._cupy.ndarray)

    def to_host(self, array: Any, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        """Copy to host memory, into `out` (e.g. a pinned buffer from `empty_host`) when given."""
        if out is None:
            return np.asarray(array.get())
        array.get(out=out)
        return out

    def from_host(self, host: npt.NDArray[Any]) -> Any:
        """A new array on the lease's GPU holding a copy of `host`; refused like any allocation past the budget."""
        with self._cupy.cuda.Device(self._device):
            return self._cupy.array(host, copy=True)

    def empty_host(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """Pinned host memory, so device-to-host copies run at full speed; unpinned and freed with the array.

        Not from CuPy's pinned pool (what cupyx.empty_pinned draws on): that pool keeps every block it ever
        handed out pinned until the process exits, so each checkpoint would leave its size in locked RAM.
        """
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        cuda = self._cupy.cuda
        return np.ndarray(shape, dtype=dtype, buffer=cuda.PinnedMemoryPointer(cuda.PinnedMemory(nbytes), 0))

    def synchronize(self) -> None:
        """Wait for all work queued on the lease's GPU."""
        self._cupy.cuda.Device(self._device).synchronize()

    def start_timer(self) -> DeviceTimer:
        """CUDA events on the lease's GPU, on the calling thread's current stream there."""
        return CudaEventTimer(self._device)

    def device_memory(self) -> tuple[int, int]:
        """The GPU's (or MIG instance's) own (free, total) bytes."""
        free, total = self._cupy.cuda.Device(self._device).mem_info
        return int(free), int(total)

    def release_cached(self) -> None:
        """Give the pool's cached, unused blocks back to the GPU."""
        with self._cupy.cuda.Device(self._device):
            self._pool.free_all_blocks()

    def memory_usage(self) -> MemoryUsage:
        """Limit, use (outside the pool plus what the pool holds), peak and refusals, for reporting to vgpud."""
        with self._lock:
            return MemoryUsage(self._budget, self._used(), max(self._peak, self._used()), self._refusals)

    def mem_info(self) -> tuple[int, int]:
        """(free, total) as the workload should see them: the GPU's numbers clamped to the budget."""
        free, total = self.device_memory()
        with self._lock:
            return workload_mem_info(self._budget, self._used(), free, total)

    def set_memory_limit(self, limit_bytes: int) -> None:
        """Resize the budget; below current use, new allocations are refused until arrays are freed."""
        self._limit_pool(check_limit(limit_bytes))

    def close(self) -> None:
        """Stop budgeting: put the allocator that was there before back, and release the pool's cached blocks.

        A backend made after this one (a resume on another GPU makes the new one before closing the old) has
        installed its allocator over ours and keeps ours as its previous one: then the newer allocator stays,
        and ours passes every request on to the one it replaced, so neither order of closing lifts a budget.
        """
        self._closed = True
        if self._cupy.cuda.get_allocator() == self._malloc:
            self._cupy.cuda.set_allocator(self._previous)
        self.release_cached()

    def _limit_pool(self, budget: int) -> None:
        room = budget - self._outside
        if room <= 0:
            how = "estimated" if self._estimated else "measured"
            raise InvalidRequestError(
                f"memory budget {format_memory(budget)} is smaller than this process's CUDA context and other "
                f"memory outside the pool (~{format_memory(self._outside)}, {how}): acquire at least "
                f"{format_memory(self._outside + 256 * 1024**2)}"
            )
        with self._lock, self._cupy.cuda.Device(self._device):
            self._pool.set_limit(size=room)
            self._budget = budget

    def _used(self) -> int:
        with self._cupy.cuda.Device(self._device):
            return self._outside + int(self._pool.total_bytes())

    def _malloc(self, size: int) -> Any:
        """The allocator CuPy calls: the budgeted pool on the lease's GPU, the previous allocator elsewhere.

        Once closed, everything goes to the previous allocator (a newer backend may still chain to this one).
        """
        if self._closed or self._cupy.cuda.runtime.getDevice() != self._device:
            return self._previous(size)
        out_of_memory = self._cupy.cuda.memory.OutOfMemoryError
        try:
            pointer = self._pool.malloc(size)
        except out_of_memory:
            self._pool.free_all_blocks()  # the pool's limit counts its cached blocks too
            try:
                pointer = self._pool.malloc(size)
            except out_of_memory as exc:
                rounded = -(-size // _ALLOCATION_UNIT) * _ALLOCATION_UNIT
                if int(self._pool.total_bytes()) + rounded <= int(self._pool.get_limit()):
                    raise  # within the budget: the GPU itself is full (other tenants), not this lease's doing
                with self._lock:
                    self._refusals += 1
                    used = self._outside + int(self._pool.total_bytes())
                    budget = self._budget
                detail = f"{format_memory(self._outside)} of it the CUDA context and other memory outside the pool"
                raise refusal_error(size, used, budget, detail=detail) from exc
        with self._lock:
            self._peak = max(self._peak, self._outside + int(self._pool.total_bytes()))
        return pointer

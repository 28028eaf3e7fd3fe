"""A preemption flag the host sets while a kernel runs and the kernel reads: how long kernels learn to stop.

On a GPU the flag is one int32 of mapped pinned host memory: the host writes it with a plain store, and a
kernel polling it through a `volatile` pointer sees the write over the bus without any launch or copy. On NumPy
it is a threading.Event behind the same surface, read between chunks of host work.
"""

from __future__ import annotations

import abc
import ctypes
import threading
from types import TracebackType
from typing import Any

from vgpu._private.errors import InvalidRequestError, NotSupportedError
from vgpu._private.runtime.array_backend import ArrayBackend

_FLAG_BYTES = 4


class PreemptFlag(abc.ABC):
    """A host-writable stop flag; kernels and chunk loops stop soon after it is set."""

    @abc.abstractmethod
    def set(self) -> None:
        """Ask running work to stop."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Let work run again (before a resume)."""

    @abc.abstractmethod
    def is_set(self) -> bool:
        """Whether a stop is asked for."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what backs the flag; idempotent. No kernel reading it may still be running."""

    @property
    @abc.abstractmethod
    def device_array(self) -> Any:
        """The flag as a device array for kernel arguments (CuPy int32, shape (1,)); None without a device."""

    def __enter__(self) -> PreemptFlag:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class HostPreemptFlag(PreemptFlag):
    """The NumPy backend's flag: a threading.Event, checked by host code between chunks."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        """Ask running work to stop."""
        self._event.set()

    def clear(self) -> None:
        """Let work run again."""
        self._event.clear()

    def is_set(self) -> bool:
        """Whether a stop is asked for."""
        return self._event.is_set()

    def close(self) -> None:
        """Nothing to release."""

    @property
    def device_array(self) -> None:
        """There is no device."""
        return None


class MappedPreemptFlag(PreemptFlag):
    """An int32 in mapped pinned host memory (cudaHostAllocMapped), visible to kernels on `device`.

    Under unified addressing (every 64-bit CUDA platform) the device pointer is what
    `cudaPointerGetAttributes` reports; CuPy has no `hostGetDevicePointer`, so that is how it is found.
    The allocation is made on `device` (the current device when None): allocating needs a CUDA context,
    and one made on another visible GPU would take memory there, outside any budget.
    """

    def __init__(self, device: int | None = None) -> None:
        import cupy  # noqa: PLC0415 -- CuPy is imported only on the GPU path, so NumPy-only use never needs it
        from cupy.cuda import runtime  # noqa: PLC0415 -- as above

        with cupy.cuda.Device(device) as current:
            device_id = int(current.id)
            if not runtime.getDeviceProperties(device_id)["canMapHostMemory"]:
                raise NotSupportedError(
                    f"GPU {device_id} cannot map host memory, so kernels cannot poll a preemption flag; "
                    "use checkpoint-boundary preemption (lease.step) instead"
                )
            self._host_ptr: int = runtime.hostAlloc(_FLAG_BYTES, runtime.hostAllocMapped)
            self._cell = ctypes.c_int32.from_address(self._host_ptr)
            self._cell.value = 0
            device_ptr = runtime.pointerGetAttributes(self._host_ptr).devicePointer
            memory = cupy.cuda.UnownedMemory(device_ptr, _FLAG_BYTES, self, device_id)
            self._device_array: Any = cupy.ndarray((1,), cupy.int32, cupy.cuda.MemoryPointer(memory, 0))
        self._device_id = device_id
        self._closed = False

    def set(self) -> None:
        """Ask running kernels to stop: a plain store the device sees on its next poll."""
        self._cell.value = 1

    def clear(self) -> None:
        """Let kernels run again."""
        self._cell.value = 0

    def is_set(self) -> bool:
        """Whether a stop is asked for (read from host memory, so a kernel's own writes show too)."""
        return bool(self._cell.value)

    def close(self) -> None:
        """Wait for the device to finish with the flag, then free the pinned memory.

        The flag keeps working on the host after (in ordinary memory), so a late `set()` from a preemption
        racing the close is harmless.
        """
        if self._closed:
            return
        import cupy  # noqa: PLC0415 -- CuPy path only
        from cupy.cuda import runtime  # noqa: PLC0415 -- as above

        self._closed = True
        self._device_array = None
        self._cell = ctypes.c_int32(self._cell.value)
        with cupy.cuda.Device(self._device_id):  # the lease's GPU, where its kernels poll the flag
            runtime.deviceSynchronize()
        runtime.freeHost(self._host_ptr)

    @property
    def device_array(self) -> Any:
        """A CuPy int32 array of shape (1,) over the flag, to pass as a `const volatile int*` argument."""
        if self._closed:
            raise InvalidRequestError("this preemption flag is closed; make a new one for the next kernel")
        return self._device_array


def preempt_flag_for(backend: ArrayBackend) -> PreemptFlag:
    """The flag that suits `backend`: mapped pinned memory for CuPy (made on its GPU), an event for NumPy."""
    if backend.name != "cupy":
        return HostPreemptFlag()
    device: int | None = getattr(backend, "device_index", None)
    return MappedPreemptFlag(device)

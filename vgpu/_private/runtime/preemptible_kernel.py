"""Long kernels that stop within one chunk of a preemption flag and resume where they stopped.

A user writes the work for one item (a CUDA `__device__` function, or a Python callable over a range on NumPy);
the kernel hands out chunks of items and checks the flag between them, so it reports exactly how far it got.

Chunk size is the trade-off: a block notices the flag only between chunks, so the stop latency is the time one
block takes for one chunk; but every chunk costs the block a global atomic and a read of the flag over the bus
(about a microsecond), so chunks should take tens of microseconds or more. The default (4096 items: 16 per
thread of a 256-thread block) suits per-item work of nanoseconds to a microsecond; take fewer items when each
is heavy, more when each is a few instructions.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from vgpu._private.errors import InvalidRequestError
from vgpu._private.runtime.preempt_flag import PreemptFlag

DEFAULT_CHUNK: Final = 4096
"""Items per chunk on a GPU (see the module docstring for the trade-off)."""
DEFAULT_HOST_CHUNK: Final = 65536
"""Items per chunk on NumPy: each chunk is one vectorised call, so Python overhead stays small."""
DEFAULT_THREADS_PER_BLOCK: Final = 256

_KERNEL_TEMPLATE: Final = """
{item_source}

extern "C" __global__ void {kernel_name}(
        const volatile int* vgpu_stop, unsigned long long* vgpu_next_chunk,
        unsigned long long vgpu_begin, unsigned long long vgpu_total,
        unsigned long long vgpu_chunk{params}) {{
    __shared__ unsigned long long vgpu_claimed;
    for (;;) {{
        if (threadIdx.x == 0) {{
            vgpu_claimed = (*vgpu_stop != 0) ? ~0ULL : atomicAdd(vgpu_next_chunk, 1ULL);
        }}
        __syncthreads();
        const unsigned long long claimed = vgpu_claimed;
        __syncthreads();
        if (claimed == ~0ULL) return;
        const unsigned long long first = vgpu_begin + claimed * vgpu_chunk;
        if (first >= vgpu_total) return;
        const unsigned long long last = (vgpu_total - first < vgpu_chunk) ? vgpu_total : first + vgpu_chunk;
        for (unsigned long long i = first + threadIdx.x; i < last; i += blockDim.x) {{
            {item_name}(i{arg_names});
        }}
    }}
}}
"""
"""Persistent blocks claim chunks from a counter until the flag is set or the work runs out. A block finishes
every chunk it claims before looking at the flag again, so when the kernel ends every claimed chunk below the
last one is complete: progress is `min(counter, chunks)` chunks, and a resume starts after them."""


@dataclass(frozen=True)
class Progress:
    """How far a run got: items [0, done_items) are complete; `stopped` when the flag cut it short."""

    done_items: int
    total: int
    stopped: bool

    @property
    def complete(self) -> bool:
        """Whether every item is done."""
        return self.done_items >= self.total


def _check_count(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidRequestError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class PreemptibleKernel(abc.ABC):
    """Work over `total` items run in chunks, stopping between chunks when its flag is set."""

    def __init__(self, total: int, chunk: int) -> None:
        self.total = _check_count("total", total, minimum=0)
        self.chunk = _check_count("chunk", chunk, minimum=1)

    def run(self, args: Sequence[Any], *, flag: PreemptFlag, start: int = 0) -> Progress:
        """Process items from `start` until done or `flag` is set; pass `progress.done_items` to resume."""
        first = _check_count("start", start, minimum=0)
        if first > self.total:
            raise InvalidRequestError(f"start {first} is past the {self.total} items; resume from done_items")
        if first == self.total or flag.is_set():
            return Progress(first, self.total, stopped=first < self.total)
        done = self._run_from(tuple(args), flag, first)
        return Progress(done, self.total, stopped=done < self.total)

    @abc.abstractmethod
    def _run_from(self, args: tuple[Any, ...], flag: PreemptFlag, start: int) -> int:
        """Run from item `start` (< total, flag clear at the call) and return the first item not done."""


class HostPreemptibleKernel(PreemptibleKernel):
    """The NumPy form: `fn(start, end, *args)` processes items [start, end); the flag is read between calls."""

    def __init__(self, fn: Callable[..., object], total: int, *, chunk: int = DEFAULT_HOST_CHUNK) -> None:
        super().__init__(total, chunk)
        self._fn = fn

    def _run_from(self, args: tuple[Any, ...], flag: PreemptFlag, start: int) -> int:
        position = start
        while position < self.total and not flag.is_set():
            end = min(position + self.chunk, self.total)
            self._fn(position, end, *args)
            position = end
        return position


class CudaPreemptibleKernel(PreemptibleKernel):
    """The CuPy form: a user `__device__` function run once per item by persistent blocks polling the flag.

    `item_source` defines `__device__ void <item_name>(unsigned long long i, <arg_types...>)`; `arg_types`
    are the C types of the extra arguments (e.g. `("float*", "const float*", "float")`), and `run` passes
    `args` in that order (CuPy arrays, or NumPy scalars of exactly those types).
    """

    def __init__(
        self,
        item_source: str,
        arg_types: Sequence[str],
        total: int,
        *,
        chunk: int = DEFAULT_CHUNK,
        item_name: str = "item",
        threads_per_block: int = DEFAULT_THREADS_PER_BLOCK,
        blocks: int | None = None,
        options: Sequence[str] = (),
    ) -> None:
        super().__init__(total, chunk)
        if not item_name.isidentifier():
            raise InvalidRequestError(f"item_name must be a C identifier, got {item_name!r}")
        if any(not t.strip() for t in arg_types):
            raise InvalidRequestError(f"arg_types must be C types such as 'float*', got {list(arg_types)!r}")
        self._threads = _check_count("threads_per_block", threads_per_block, minimum=1)
        self._blocks = None if blocks is None else _check_count("blocks", blocks, minimum=1)
        self._arg_count = len(arg_types)
        self.kernel_name = f"vgpu_preemptible_{item_name}"
        self.source = _KERNEL_TEMPLATE.format(
            item_source=item_source,
            kernel_name=self.kernel_name,
            item_name=item_name,
            params="".join(f", {t} vgpu_arg{k}" for k, t in enumerate(arg_types)),
            arg_names="".join(f", vgpu_arg{k}" for k in range(len(arg_types))),
        )
        import cupy  # noqa: PLC0415 -- CuPy is imported only on the GPU path, so NumPy-only use never needs it

        self._kernel = cupy.RawKernel(self.source, self.kernel_name, options=tuple(options))

    def _grid(self, chunks: int) -> int:
        """Enough blocks to fill the device (or `blocks`), never more than there are chunks to claim."""
        if self._blocks is not None:
            return min(self._blocks, chunks)
        import cupy  # noqa: PLC0415 -- CuPy path only

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        per_sm = max(1, int(props["maxThreadsPerMultiProcessor"]) // self._threads)
        return min(int(props["multiProcessorCount"]) * per_sm, chunks)

    def _run_from(self, args: tuple[Any, ...], flag: PreemptFlag, start: int) -> int:
        import cupy  # noqa: PLC0415 -- CuPy path only

        if len(args) != self._arg_count:
            raise InvalidRequestError(f"the kernel takes {self._arg_count} arguments, got {len(args)}")
        stop = flag.device_array
        if stop is None:
            raise InvalidRequestError("a GPU kernel needs a device-visible flag: use preempt_flag_for(backend)")
        chunks = math.ceil((self.total - start) / self.chunk)
        next_chunk = cupy.zeros(1, dtype=cupy.uint64)
        fixed = (stop, next_chunk, np.uint64(start), np.uint64(self.total), np.uint64(self.chunk))
        self._kernel((self._grid(chunks),), (self._threads,), fixed + args)
        finished = cupy.cuda.Event(disable_timing=True)
        finished.record()
        finished.synchronize()  # releases the GIL, so the thread that sets the flag can run meanwhile
        claimed = int(next_chunk.get()[0])
        return min(self.total, start + min(claimed, chunks) * self.chunk)

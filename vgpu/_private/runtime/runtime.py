"""A lease's in-process runtime: its memory budget, compute share and registered state, on one backend.

`Lease` owns one (`lease.runtime`) and drives it: `step()` at each checkpoint (the compute share),
`suspend()` when the pool takes the GPU back (state to host, device memory freed), `resume()` on the GPU the
lease was given next, `resize()` when the slice changed, `close()` at the end. The workload uses `xp`,
`to_host`, `mem_info` and `measure()`; the heartbeat reports `usage()`.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from vgpu._private.errors import InvalidRequestError, LeaseEndedError
from vgpu._private.runtime.array_backend import ArrayBackend
from vgpu._private.runtime.compute_throttle import ComputeThrottle, ThrottlePolicy, ThrottleStats
from vgpu._private.runtime.memory_budget import MemoryUsage
from vgpu._private.runtime.numpy_backend import NumpyBackend
from vgpu._private.runtime.preempt_flag import PreemptFlag, preempt_flag_for
from vgpu._private.runtime.preemptible_kernel import PreemptibleKernel, Progress
from vgpu._private.runtime.state_store import OffloadReport, RestoreReport, StateStore
from vgpu._private.runtime.torch_budget import budget_torch_for

_BACKENDS = frozenset({"auto", "cupy", "numpy"})


@dataclass(frozen=True, slots=True)
class RuntimeTarget:
    """The slice a runtime enforces: where it is and what it may use."""

    gpu_uuid: str
    """The GPU (or MIG device) UUID the slice is on."""
    memory_bytes: int
    compute_share: float
    """Share of the GPU's time, 0 < share <= 1 (1 for MIG and whole GPUs: no throttling needed)."""


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How a lease's runtime enforces: `vgpu.acquire(..., runtime=vgpu.RuntimeOptions(throttle="off"))`."""

    backend: str = "auto"
    """"auto" (CuPy when it is installed and sees the lease's GPU, else NumPy), "cupy" or "numpy"."""
    throttle: ThrottlePolicy | str = ThrottlePolicy.HARD
    """"hard": never above the share; "burst": up to the whole GPU while the daemon's heartbeat answers say it
    is otherwise idle (no other lease on it measured busy or unmeasured); "off": measure only."""
    spill_dir: Path | str | None = None
    """Where checkpoints spill state that does not fit in `host_limit_bytes` (None: the system temp dir)."""
    host_limit_bytes: int | None = None
    """Most bytes a checkpoint keeps in (pinned) host memory; the rest goes to files. None: no limit."""

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise InvalidRequestError(f"runtime backend must be auto, cupy or numpy, got {self.backend!r}")
        throttle: object = self.throttle
        if isinstance(throttle, str):
            try:
                object.__setattr__(self, "throttle", ThrottlePolicy(throttle.lower()))
            except ValueError:
                raise InvalidRequestError(f"throttle must be hard, burst or off, got {throttle!r}") from None
        elif not isinstance(throttle, ThrottlePolicy):
            raise InvalidRequestError(f"throttle must be hard, burst or off, got {throttle!r}")
        if isinstance(self.spill_dir, str):
            object.__setattr__(self, "spill_dir", Path(self.spill_dir))
        limit = self.host_limit_bytes
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidRequestError(f"host_limit_bytes must be a number of bytes >= 0 or None, got {limit!r}")


def make_backend(target: RuntimeTarget, kind: str) -> ArrayBackend:
    """The backend for `target`: CuPy on the lease's GPU where it can be, else a simulated NumPy device."""
    if kind not in _BACKENDS:
        raise InvalidRequestError(f"runtime backend must be auto, cupy or numpy, got {kind!r}")
    have_cupy = importlib.util.find_spec("cupy") is not None
    if kind == "cupy" and not have_cupy:
        raise InvalidRequestError(
            "the cupy runtime backend needs CuPy: pip install 'vgpu[cuda13]' (CUDA 13) or 'vgpu[cuda12]' (CUDA 12), "
            "or use 'auto'"
        )
    if kind == "numpy" or not have_cupy:
        return NumpyBackend(target.memory_bytes)
    from vgpu._private.runtime import cupy_backend  # noqa: PLC0415 -- imports CuPy: only on this path

    index = cupy_backend.find_cupy_device(target.gpu_uuid)
    if index is None:
        if kind == "cupy":
            raise InvalidRequestError(
                f"CuPy sees no device {target.gpu_uuid} in this process: run it with the lease's environment "
                "(CUDA_VISIBLE_DEVICES), or use runtime='numpy'"
            )
        return NumpyBackend(target.memory_bytes)
    return cupy_backend.CupyBackend(index, target.memory_bytes, gpu_uuid=target.gpu_uuid)


class Runtime:
    """The runtime of one lease in this process (see the module docstring for who calls what)."""

    def __init__(self, backend: ArrayBackend, target: RuntimeTarget, options: RuntimeOptions) -> None:
        self._lock = threading.Lock()
        self._backend = backend
        self._target = target
        self._options = options
        self._throttle = ComputeThrottle(backend, target.compute_share, options.throttle)
        spill = None if options.spill_dir is None else Path(options.spill_dir)
        self._store = StateStore(backend, spill_dir=spill, host_limit_bytes=options.host_limit_bytes)
        self._flag = preempt_flag_for(backend)
        self._closed = False
        self.torch_budgeted = budget_torch_for(target.gpu_uuid, target.memory_bytes)
        """Whether PyTorch's allocator was capped to the budget (torch already loaded and seeing the GPU)."""

    # -- what the workload uses ---------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The backend in use: "cupy" or "numpy"."""
        return self._backend.name

    @property
    def xp(self) -> Any:
        """The array module to use: CuPy (budgeted pool), or NumPy with its arrays counted on the budget."""
        return self._backend.xp

    def to_host(self, array: Any) -> npt.NDArray[Any]:
        """A host (NumPy) copy of a device array."""
        return self._backend.to_host(array)

    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes as this lease sees them: clamped to its budget, never negative."""
        return self._backend.mem_info()

    def memory_usage(self) -> MemoryUsage:
        """Budget, use, peak and refused allocations."""
        return self._backend.memory_usage()

    @property
    def state(self) -> Mapping[str, Any]:
        """The registered state by name (after a resume: the restored values)."""
        return self._store.state

    def register(self, name: str, value: Any) -> Any:
        """Keep `value` (an array or a dict/list/tuple tree of them) across preemptions; returns it."""
        self._check_open()
        return self._store.register(name, value)

    def unregister(self, name: str) -> None:
        """Stop keeping the state registered under `name`."""
        self._store.unregister(name)

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Charge the GPU time of the work inside to the compute share (e.g. a long kernel outside steps)."""
        with self._throttle.measure():
            yield

    def run_preemptible(self, kernel: PreemptibleKernel, args: Sequence[Any] = (), *, start: int = 0) -> Progress:
        """Run `kernel` from item `start` until done or the pool asks for the GPU back; its GPU time is charged.

        On a stop, call `lease.checkpoint()` (it yields and comes back), then run again from
        `progress.done_items`: each item is done exactly once.
        """
        self._check_open()
        with self.measure():
            return kernel.run(args, flag=self._flag, start=start)

    @property
    def preempt_flag(self) -> PreemptFlag:
        """Set while the pool asks for the GPU back: preemptible kernels poll it and stop early."""
        return self._flag

    def throttle_stats(self) -> ThrottleStats:
        """GPU time used, time waited for the share, recent utilisation."""
        return self._throttle.stats()

    # -- what the lease drives ----------------------------------------------------------------------
    def step(self) -> None:
        """A checkpoint boundary: charge the GPU time since the last one and wait for the share if due."""
        if not self._closed:
            self._throttle.step()

    def set_gpu_idle(self, idle: bool) -> None:
        """The daemon's word on whether the lease's GPU is otherwise idle: the "burst" policy then uses all of it."""
        self._throttle.set_gpu_idle(idle)

    def preempt_asked(self) -> None:
        """The pool wants the GPU back: stop preemptible kernels and any wait for the share."""
        self._flag.set()
        self._throttle.interrupt()

    def suspend(self) -> OffloadReport:
        """Move the registered state to host memory (or disk) and free the device memory it held."""
        self._throttle.pause()
        report = self._store.offload()
        self._backend.release_cached()
        return report

    def resume(self, target: RuntimeTarget) -> RestoreReport:
        """Bring the state back on the lease's (maybe new) GPU, with the new slice's budget and share."""
        with self._lock:
            if target.gpu_uuid != self._target.gpu_uuid:
                # Another GPU: its own backend, timers and device-visible flag (the share's history restarts).
                old, self._backend = self._backend, make_backend(target, self._options.backend)
                old.close()
                self._throttle = ComputeThrottle(self._backend, target.compute_share, self._options.throttle)
                self._flag.close()
                self._flag = preempt_flag_for(self._backend)
            self._apply_target(target)
        report = self._store.restore(self._backend)
        self._flag.clear()
        return report

    def resize(self, target: RuntimeTarget) -> None:
        """The slice changed size in place (an elastic lease): new budget and share from now on."""
        with self._lock:
            self._apply_target(target)

    def usage(self) -> tuple[float, int]:
        """(utilization 0..1 of the granted share, memory bytes in use): what the heartbeat reports."""
        busy = self._throttle.utilization() / self._target.compute_share
        return min(1.0, busy), self._backend.memory_usage().used_bytes

    def close(self) -> None:
        """Drop the registered state and spill files; the runtime does nothing afterwards."""
        if self._closed:
            return
        self._closed = True
        self._throttle.interrupt()
        self._store.close()
        self._flag.close()
        self._backend.close()

    def _apply_target(self, target: RuntimeTarget) -> None:
        self._backend.set_memory_limit(target.memory_bytes)
        self._throttle.set_share(target.compute_share)
        self._target = target
        self.torch_budgeted = budget_torch_for(target.gpu_uuid, target.memory_bytes)

    def _check_open(self) -> None:
        if self._closed:
            raise LeaseEndedError("the lease ended: its runtime keeps no state any more")

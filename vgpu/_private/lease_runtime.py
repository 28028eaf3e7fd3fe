"""The in-process runtime side of a held lease: `lease.runtime`, `lease.register`, `lease.state`.

A mixin of `LeaseBase`: the runtime is made on first use from the lease's slice on this node (at grant when
CuPy or PyTorch is already loaded in a synchronous lease), told about
preemption notices and resizes by the follower, suspended before an acknowledgement, resumed after the
lease is, and closed when the lease is let go.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Mapping
from typing import Any

from vgpu._private import errors
from vgpu._private.errors import LeaseEndedError, LeaseStateError, VgpuError
from vgpu._private.lease_records import Slice
from vgpu._private.runtime.runtime import Runtime, RuntimeOptions, RuntimeTarget, make_backend
from vgpu._private.units import MILLI_PER_GPU

log = logging.getLogger("vgpu")
_GPU_LIBRARIES = ("cupy", "torch")


class LeaseRuntime:
    """The runtime of a lease this process holds (mixed into LeaseBase, which sets the fields below)."""

    _lock: threading.Lock
    _id: str
    _node: str
    _state: str
    _slices: tuple[Slice, ...]

    def _init_runtime(self) -> None:
        self._runtime: Runtime | None = None
        self._runtime_closed = False
        self._runtime_lock = threading.Lock()
        self._runtime_options = RuntimeOptions()

    @property
    def runtime(self) -> Runtime:
        """The runtime that holds this process to the lease's slice (made on first use).

        `runtime.xp` is the array module to use (CuPy with the memory budget, or NumPy when there is no
        GPU), `runtime.to_host(x)` copies an array to host memory, `runtime.mem_info()` is (free, total)
        as the lease sees them. `checkpoint()` applies its compute share and saves its registered state.
        """
        with self._runtime_lock:  # one maker at a time; the lease lock is not held while CuPy starts
            with self._lock:
                if self._runtime is not None:
                    return self._runtime
                if self._runtime_closed:
                    raise LeaseEndedError(f"lease {self._id} ended: its runtime is closed")
                target = self._runtime_target_locked()
            runtime = Runtime(make_backend(target, self._runtime_options.backend), target, self._runtime_options)
            with self._lock:
                self._runtime = runtime
            return runtime

    def _start_runtime_for_gpu_libraries(self) -> None:
        """With CuPy or PyTorch already loaded, start the runtime now: their allocations are budgeted from the first.

        Otherwise it starts when the workload first touches `lease.runtime`.
        """
        if not any(name in sys.modules for name in _GPU_LIBRARIES):
            return
        with contextlib.suppress(VgpuError):  # no slice here yet (queued, suspended): it starts on first use
            _ = self.runtime

    def register(self, name: str, value: Any) -> Any:
        """Keep `value` (an array, or a dict/list/tuple tree of arrays) across preemptions; returns it.

        When the pool takes the GPU back, checkpoint() copies registered state to host memory, frees the
        device memory and, once the lease is resumed (maybe on another GPU), restores it: read it back from
        `lease.state[name]` after checkpoint() returned True (the same object where it was restored in place).
        Without checkpoint() calls (an on_preempt callback only), the state is saved once on_preempt returns:
        the workload must have stopped touching it by then, and finds it again in on_resume.
        """
        return self.runtime.register(name, value)

    @property
    def state(self) -> Mapping[str, Any]:
        """The registered state by name (see `register`); the lease's lifecycle state is `status`."""
        return self.runtime.state

    def _runtime_target_locked(self) -> RuntimeTarget:
        mine = [s for s in self._slices if s.node == self._node] or list(self._slices)
        if not mine:
            raise LeaseStateError(
                f"lease {self._id} holds no slice now ({self._state}): its runtime starts once it holds one",
                reason=errors.LEASE_SUSPENDED,
            )
        first = mine[0]
        shared = first.isolation == "shared"
        return RuntimeTarget(
            gpu_uuid=first.mig_uuid or first.gpu_uuid,
            memory_bytes=first.memory_bytes,
            compute_share=first.compute_milli / MILLI_PER_GPU if shared and first.compute_milli else 1.0,
        )

    def _runtime_preempt_asked(self) -> None:
        """A PREEMPT arrived: the runtime (if the workload started one) stops kernels and share waits."""
        if self._runtime is not None:
            self._runtime.preempt_asked()

    def _runtime_gpu_idle(self, idle: bool) -> None:
        """A heartbeat said whether the lease's GPU is otherwise idle (the runtime's burst policy follows it)."""
        if self._runtime is not None:
            self._runtime.set_gpu_idle(idle)

    def _runtime_resized(self) -> None:
        """A RESIZED arrived: the runtime takes the new slice's budget and share."""
        runtime = self._runtime
        if runtime is None:
            return
        with self._lock:
            target = self._runtime_target_locked() if self._slices else None
        if target is not None:
            runtime.resize(target)

    def _runtime_suspend(self) -> None:
        """Before acknowledging a preemption: registered state to host, device memory freed."""
        runtime = self._runtime
        if runtime is None:
            return
        report = runtime.suspend()
        if report.still_referenced_bytes:
            log.warning(
                "vgpu lease %s: %d bytes of registered GPU state are still referenced outside lease.state, so "
                "that memory could not be freed; read registered state through lease.state[name]",
                self._id,
                report.still_referenced_bytes,
            )

    def _runtime_resume(self) -> None:
        """After the resume: registered state back on the lease's (maybe new) GPU."""
        runtime = self._runtime
        if runtime is None:
            return
        with self._lock:
            target = self._runtime_target_locked()
        runtime.resume(target)

    def _close_runtime(self) -> None:
        with self._lock:
            runtime, self._runtime = self._runtime, None
            self._runtime_closed = True
        if runtime is not None:
            runtime.close()

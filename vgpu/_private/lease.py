"""`Lease`: a granted lease held by this process, kept alive by a heartbeat thread.

The thread lives exactly as long as the lease is held: release(), close() or loss stop it. Leaving a
`with` block releases the lease (or only stops following it, for an attached lease), and raises
LeaseLostError when the lease was lost meanwhile (see `vgpu._private.loss_notice`).

A second thread, the follower ("vgpu-follow-<id>"), reads the lease's events: it hears of the lease's end at
once and takes part in preemption (see `vgpu._private.preemption`). It opens its stream at once when
on_preempt/on_resume/on_resize is given or on first use of `preempt_requested`, `checkpoint()` or
`ack_preempt()`, else shortly after the grant (`LOSS_WATCH_DELAY`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Final

from vgpu._private import errors, loss_notice
from vgpu._private.errors import (
    DaemonUnavailableError,
    LeaseEndedError,
    LeaseLostError,
    LeaseNotFoundError,
    LeasePermissionError,
    VgpuError,
)
from vgpu._private.follower import Follower, OnLeaseChange, OnPreempt
from vgpu._private.heartbeat_policy import HeartbeatPolicy
from vgpu._private.lease_base import LeaseBase, log
from vgpu._private.lease_records import LeaseEvent, PreemptNotice
from vgpu._private.loss_notice import Cancellers, LostCallback
from vgpu._private.runtime.runtime import RuntimeOptions
from vgpu._private.sync_client import SyncClient
from vgpu.api.v1 import types_pb2

WATCH_WINDOW: Final = 300.0
"""Deadline of one WatchLease stream; events() resumes transparently when it passes."""
_MAX_RESUME_BACKOFF: Final = 2.0


class Lease(LeaseBase):
    """A lease this process holds: fields, release/refresh/events, a heartbeat thread, preemption checkpoints.

    Callbacks and the threads that run them: `on_preempt` runs on the thread that calls `checkpoint()`
    once the workload has called it at least once (cooperative mode), else on the follower thread
    (callback mode: the follower saves and acknowledges by itself). `on_resume` runs on the thread whose
    `checkpoint()` waited for the resume, else on the follower thread; `on_resize` runs on the follower
    thread, `on_lost` on whichever thread notices the loss first (follower, heartbeat, or the one calling
    release()), once. A callback that raises on a background thread is logged.
    """

    def __init__(
        self,
        client: SyncClient,
        msg: types_pb2.Lease,
        token: str,
        *,
        release_on_exit: bool = True,
        owns_client: bool = False,
        on_finish: Callable[[Lease], None] | None = None,
        on_preempt: OnPreempt | None = None,
        on_resume: OnLeaseChange | None = None,
        on_resize: OnLeaseChange | None = None,
        on_lost: LostCallback | None = None,
        raise_on_lost: bool = True,
        runtime: RuntimeOptions | None = None,
        apply: bool = False,
    ) -> None:
        """`apply`: export the lease's environment into this process before its runtime starts (see `apply()`)."""
        super().__init__(msg, token, on_lost=on_lost, raise_on_lost=raise_on_lost)
        self._runtime_options = runtime or RuntimeOptions()
        self._client = client
        self.release_on_exit = release_on_exit
        """Whether leaving a `with` block (or closing its Pool) releases the lease or only lets it go."""
        self._owns_client = owns_client
        self._on_finish = on_finish
        self._stop = threading.Event()
        self._finished = False
        self._cancellers = Cancellers()
        self._follower = Follower(self, on_preempt=on_preempt, on_resume=on_resume, on_resize=on_resize)
        self._notify = self._follower.changed.notify_all
        self._thread = threading.Thread(target=self._heartbeat_loop, name=f"vgpu-heartbeat-{self.id}", daemon=True)
        self._thread.start()
        if self._follower.wanted:
            self._follower.start()
        elif loss_notice.LOSS_WATCH_DELAY is not None:
            self._follower.start(delay=loss_notice.LOSS_WATCH_DELAY)
        if apply:  # before the runtime starts: with CuPy imported, starting it initialises CUDA
            self._export_env_or_release()
        self._start_runtime_for_gpu_libraries()

    def _export_env_or_release(self) -> None:
        """Export the environment for the lease's life; when that is refused, give the lease back and raise."""
        try:
            self._export_env_for_life()
        except VgpuError:
            try:
                self.release()
            except VgpuError as error:
                log.warning("vgpu lease %s: release after a refused apply failed: %s", self.id, error)
                self.close()
            raise

    # -- ending -----------------------------------------------------------------------------------
    def release(self) -> None:
        """Give the lease back. Idempotent, and quiet for a lease that already ended or was lost.

        A lease the daemon revoked or expired before this call, unheard of so far, is marked lost (on_lost runs).
        """
        if self.released:
            return
        self._releasing = True
        self._stop_following()
        try:
            msg = self._client.release(self.id, self.token)
        except (LeaseEndedError, LeaseNotFoundError):
            pass
        except VgpuError:
            if not self.lost:
                raise
        else:
            self._apply(msg)
            if self._ended_under_us():  # revoked or expired before this release, and not yet heard of
                self._lose(self._ended_reason())
        if self._mark_released():
            self._finish()

    def close(self) -> None:
        """Stop heartbeating and following the lease without releasing it (it expires after its TTL)."""
        self._stop_following()
        self._finish()

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Release (or let go) the lease; raise LeaseLostError if it was lost, unless the body raised."""
        if not self.release_on_exit:
            self.close()
        elif exc is None:
            self.release()
        else:
            try:
                self.release()
            except VgpuError as error:  # keep the body's exception; the lease expires after its TTL anyway
                log.warning("vgpu lease %s: release failed while handling %s: %s", self.id, exc_type, error)
                self.close()
        self._raise_if_lost(body_raised=exc is not None)

    def _stop_following(self) -> None:
        self._stop.set()
        self._cancellers.cancel_all()
        self._follower.wake()  # a checkpoint() waiting for the resume gives up
        for thread in (self._thread, self._follower.thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=self._client.timeout + 1)

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self._drop_identity()
        self._close_runtime()
        self._restore_exported_env()
        if self._owns_client:
            self._client.close()
        if self._on_finish is not None:
            self._on_finish(self)

    # -- reading ----------------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self.lost:
            raise LeaseLostError(f"lease {self.id} is lost: {self.lost_reason}")
        if self.released:
            raise LeaseEndedError(f"lease {self.id} was released by this process")
        if self._stop.is_set():
            raise VgpuError(f"lease {self.id} was closed in this process", reason=errors.CLIENT_CLOSED)

    def refresh(self) -> None:
        """Re-read the lease from the daemon (state, slices, preemption deadline)."""
        self._check_usable()
        try:
            msg = self._client.get_lease(self.id, self.token)
        except (LeaseEndedError, LeaseNotFoundError, LeasePermissionError) as error:
            self._lose(error.message)
            raise
        self._apply(msg)
        if self._ended:
            self._lose(self._ended_reason())

    def events(self, after_sequence: int = 0, *, keepalives: bool = False) -> Generator[LeaseEvent, None, None]:
        """Events of this lease (state changes, preemption notices), resuming after breaks.

        Ends after the lease's final event or when this process releases/closes it; raises
        LeaseLostError once the lease is marked lost for another reason than ending (e.g. an unreachable
        daemon). When the heartbeat learns of the end first, the stream is reopened to deliver the end.
        """
        last = after_sequence
        backoff = 0.1
        final_try = False
        while True:
            if self.lost:
                # Lost because it ended (the heartbeat heard first): reopen once to deliver the end event.
                if not (self._ended or self._end_heard) or final_try:
                    raise LeaseLostError(f"lease {self.id} is lost: {self.lost_reason}")
                final_try = True
            if self.released or (self._stop.is_set() and not final_try):
                return
            # The last try keeps its cancel to itself: the loss that triggered it may still be cancelling.
            cancellers = set() if final_try else self._cancellers
            stream = self._client.watch(self.id, self.token, last, timeout=WATCH_WINDOW, cancellers=cancellers)
            try:
                for msg in stream:
                    backoff = 0.1
                    last = max(last, msg.sequence)
                    self._apply_event(msg)
                    event = LeaseEvent.from_proto(msg)
                    if keepalives or event.type != "keepalive":
                        yield event
            except (LeaseEndedError, LeaseNotFoundError, LeasePermissionError) as error:
                self._lose(error.message)
                raise
            except VgpuError as error:
                if error.reason == errors.DAEMON_TIMEOUT:
                    continue  # the stream's window passed: resume at once
                if error.reason != errors.CANCELLED and not isinstance(error, DaemonUnavailableError):
                    raise
            else:
                return  # the daemon ended the stream after the lease's final event
            finally:
                stream.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, _MAX_RESUME_BACKOFF)

    # -- preemption -------------------------------------------------------------------------------
    def checkpoint(self) -> bool:
        """Call at iteration boundaries: yield the GPUs here if the daemon asked for them.

        Returns False at once (no RPC) when no preemption is pending. When one is: runs
        on_preempt(lease, notice) on this thread, acknowledges (the lease is suspended and its GPUs go to
        another lease), blocks until the lease is resumed (lease.slices and lease.env then name the new
        GPUs), runs on_resume(lease) on this thread and returns True. The first call puts the lease in
        cooperative mode: notices are then left to checkpoint(), so call it often enough to meet
        `preempt_deadline`.

        Raises what on_preempt raised, without acknowledging (the daemon revokes the lease at the deadline
        unless a later checkpoint() succeeds), and LeaseLostError (`.reason`: the end reason, e.g.
        PREEMPT_DEADLINE_MISSED) when the lease ends or is lost meanwhile.
        """
        self._check_usable()
        self._follower.start()
        return self._follower.checkpoint()

    def ack_preempt(self) -> None:
        """Acknowledge the pending preemption now: the daemon frees the slices and suspends the lease.

        For launchers whose workload checkpoints out of process (`checkpoint()` does this, and waits for
        the resume, in-process). on_resume runs on the follower thread once the lease is resumed, or on
        this thread when the daemon re-granted it within the acknowledgement. Raises LeaseStateError when
        there is nothing to acknowledge.
        """
        self._check_usable()
        self._follower.start()
        self._follower.ack_preempt()

    def wait_preempt(self, timeout: float | None = None) -> PreemptNotice | None:
        """Block until the daemon asks this lease to yield; the notice, or None after `timeout` seconds.

        For launcher and monitor threads that have nothing else to do: e.g. signal the workload, wait for
        its checkpoint, then `ack_preempt()`. Returns at once while a notice is pending; raises
        LeaseLostError when the lease ends or is lost meanwhile.
        """
        self._check_usable()
        self._follower.start()
        return self._follower.wait_preempt(timeout)

    def _start_follower(self) -> None:
        self._follower.start()

    # -- heartbeats -------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        policy = HeartbeatPolicy(self.ttl)
        delay = policy.interval
        while not self._stop.wait(delay):
            try:
                answer = self._client.heartbeat(
                    self.id,
                    self.token,
                    timeout=policy.call_timeout(self._client.timeout),
                    usage=self._usage_report(),
                )
            except VgpuError as error:
                if self._stop.is_set() or error.reason == errors.CLIENT_CLOSED:
                    return
                verdict = policy.failed(error)
                if verdict.lost_reason is not None:
                    self._end_heard = isinstance(error, LeaseEndedError)
                    if self._end_heard:
                        self._describe_end()  # so that `status` shows how it ended before on_lost runs
                    self._lose(verdict.lost_reason)
                    return
                delay = verdict.retry_in
                continue
            if self._stop.is_set():
                return
            policy.answered(answer.ttl.seconds)
            self._apply_heartbeat(answer)
            if self._ended:
                self._lose(self._describe_end())
                return
            delay = policy.interval

    def _describe_end(self) -> str:
        with contextlib.suppress(VgpuError):  # the heartbeat already said it ended; details are a nicety
            self._apply(self._client.get_lease(self.id, self.token))
        return self._ended_reason()

    def _lose(self, reason: str) -> None:
        if not self._mark_lost(reason):
            return
        self._stop.set()
        self._cancellers.cancel_all()
        self._follower.wake()  # a checkpoint() waiting for the resume raises LeaseLostError
        callback = self.on_lost
        if callback is not None:
            try:
                callback(reason)
            except Exception:  # noqa: BLE001 -- a user callback must not end the heartbeat thread
                log.exception("vgpu lease %s: on_lost callback raised", self.id)

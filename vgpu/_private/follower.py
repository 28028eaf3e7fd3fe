"""The thread side of the preemption protocol for one `Lease`: its follower thread, checkpoint() and ack.

The follower ("vgpu-follow-<lease id>") reads the lease's events through `Lease.events()` (which resumes
with after_sequence after a broken stream), so notices, suspensions, resumes, resizes and the lease's end
reach the lease whether or not user code reads events itself. Every lease has one: it is how a revocation,
expiry or eviction is heard at once (`vgpu._private.loss_notice`). The rules of who acts on a notice live in
`vgpu._private.preemption`; this module blocks, calls back and talks to the daemon.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from vgpu._private import errors
from vgpu._private.errors import (
    LeaseEndedError,
    LeaseLostError,
    LeaseNotFoundError,
    LeasePermissionError,
    LeaseStateError,
    VgpuError,
)
from vgpu._private.lease_base import log
from vgpu._private.lease_records import LeaseEvent, PreemptNotice
from vgpu._private.preemption import Phase, Work

if TYPE_CHECKING:
    from vgpu._private.lease import Lease
    from vgpu._private.lease_base import LeaseBase

OnPreempt = Callable[["Lease", PreemptNotice], object]
"""on_preempt(lease, notice): save what must survive and free the GPU memory; returning acknowledges."""
OnLeaseChange = Callable[["Lease"], object]
"""on_resume(lease) / on_resize(lease): read lease.env / lease.slices again and carry on."""

GONE: Final = (LeaseEndedError, LeaseNotFoundError, LeasePermissionError)
"""Errors that mean the lease is gone for this process (shared with the asyncio follower)."""
FOLLOW_MAX_BACKOFF: Final = 2.0
"""Longest pause before following a lease's events again after a broken stream."""
WAKE_EVERY: Final = 1.0
"""A waiting checkpoint() re-checks the lease this often even without a notification."""


def gone_error(lease: LeaseBase) -> VgpuError:
    """The error for waiting on a lease that is lost (its end reason as `.reason`), released or closed."""
    if lease.lost:
        return LeaseLostError(f"lease {lease.id} is lost: {lease.lost_reason}", reason=lease.end_reason or None)
    if lease.released or lease._releasing:
        return LeaseEndedError(f"lease {lease.id} was released by this process")
    return VgpuError(f"lease {lease.id} was closed in this process", reason=errors.CLIENT_CLOSED)


class Follower:
    """Follows one lease's events on a thread and runs its part of the preemption protocol."""

    def __init__(
        self,
        lease: Lease,
        *,
        on_preempt: OnPreempt | None,
        on_resume: OnLeaseChange | None,
        on_resize: OnLeaseChange | None,
    ) -> None:
        self._lease = lease
        self._on_preempt = on_preempt
        self._on_resume = on_resume
        self._on_resize = on_resize
        self.changed = threading.Condition(lease._lock)
        """Notified (under the lease lock) whenever the lease's preemption phase or liveness changes."""
        self._checkpointing = threading.Lock()
        """One checkpoint() at a time: a second caller waits for the first, then finds nothing pending."""
        self._go = threading.Event()
        """Set when the stream must open now (preemption use, or the lease let go): cuts a start delay short."""
        self.thread: threading.Thread | None = None

    @property
    def wanted(self) -> bool:
        """Whether callbacks were given, so the thread should run from the start."""
        return any(cb is not None for cb in (self._on_preempt, self._on_resume, self._on_resize))

    def start(self, *, delay: float = 0.0) -> None:
        """Start the thread once, unless the lease is already let go; it opens the stream after `delay` seconds.

        A later start without delay (preemption use) cuts a delay still running short.
        """
        lease = self._lease
        if not delay and not self._go.is_set():
            self._go.set()
        if self.thread is not None:
            return  # the common case, without the lock: preempt_requested may be read every iteration
        with lease._lock:
            if self.thread is not None or lease._stop.is_set():
                return
            self.thread = threading.Thread(
                target=self._follow, args=(delay,), name=f"vgpu-follow-{lease.id}", daemon=True
            )
            self.thread.start()

    def wake(self) -> None:
        """Let a waiting checkpoint() (or the thread's start delay) look at the lease again: it was let go."""
        self._go.set()
        with self.changed:
            self.changed.notify_all()

    # -- checkpoint() and ack_preempt() -----------------------------------------------------------
    def checkpoint(self) -> bool:
        """See `Lease.checkpoint()`."""
        lease = self._lease
        tracker = lease._preempt
        runtime = lease._runtime
        if runtime is not None:
            runtime.step()  # the compute share: may wait here (a preemption notice cuts the wait short)
        if tracker.cooperative and tracker.phase is Phase.RUNNING:
            return False  # the fast path: no lock, no RPC
        with self._checkpointing:
            with lease._lock:
                step = tracker.begin_checkpoint()
                notice = tracker.notice
            if step is Phase.RUNNING:
                return False
            try:
                if step is Phase.SAVING and notice is not None:
                    self._save_and_ack(notice, by_follower=False)
                self._await_resume()
                lease._runtime_resume()
            finally:
                with lease._lock:
                    tracker.end_checkpoint()
        if self._on_resume is not None:
            self._on_resume(lease)
        return True

    def ack_preempt(self) -> None:
        """See `Lease.ack_preempt()`."""
        lease = self._lease
        with lease._lock:
            step = lease._preempt.begin_ack()
        if step is not Phase.SAVING:
            raise LeaseStateError(
                f"lease {lease.id} is {step.value}: its preemption was already acknowledged "
                "(or is being, by checkpoint() or the follower)"
            )
        try:
            lease._runtime_suspend()
        except BaseException:
            self._failed(by_follower=False)
            raise
        self._acknowledge(by_follower=False)
        with lease._lock:
            resumed = lease._preempt.take_unwaited_resume()  # re-granted within the acknowledgement
        if resumed:
            lease._runtime_resume()
            if self._on_resume is not None:
                self._on_resume(lease)

    def _save_and_ack(self, notice: PreemptNotice, *, by_follower: bool) -> None:
        """on_preempt, then AckPreempt; the caller claimed the notice (the phase is SAVING)."""
        try:
            if self._on_preempt is not None:
                self._on_preempt(self._lease, notice)
            self._lease._runtime_suspend()
        except BaseException:
            self._failed(by_follower=by_follower)
            raise
        self._acknowledge(by_follower=by_follower)

    def _acknowledge(self, *, by_follower: bool) -> None:
        lease = self._lease
        try:
            msg = lease._client.ack_preempt(lease.id, lease.token)
        except LeaseStateError:
            if not self._reconcile():
                raise
            return
        except GONE as error:
            self._failed(by_follower=by_follower)
            lease._lose(error.message)
            raise LeaseLostError(f"lease {lease.id} is lost: {error.message}", reason=error.reason) from error
        except BaseException:
            self._failed(by_follower=by_follower)
            raise
        with lease._lock:
            if lease._preempt.acked():
                lease._apply_locked(msg)

    def _failed(self, *, by_follower: bool) -> None:
        with self._lease._lock:
            self._lease._preempt.save_failed(by_follower=by_follower)

    def _reconcile(self) -> bool:
        """AckPreempt said 'not preempting': read the lease and go on from where it stands."""
        lease = self._lease
        try:
            msg = lease._client.get_lease(lease.id, lease.token)
        except VgpuError:
            self._failed(by_follower=False)
            return False
        with lease._lock:
            lease._apply_locked(msg)
            return lease._preempt.reconcile(lease.status)

    def wait_preempt(self, timeout: float | None) -> PreemptNotice | None:
        """See `Lease.wait_preempt()`."""
        lease = self._lease
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while not self._gone():
                if lease._preempt.requested:
                    return lease._preempt.notice
                left = WAKE_EVERY if deadline is None else min(WAKE_EVERY, deadline - time.monotonic())
                if left <= 0:
                    return None
                self.changed.wait(timeout=left)
        raise self._gone_error()  # outside the lock: marking the lease lost takes it

    def _await_resume(self) -> None:
        """Block until the lease is resumed; raise when it ends, is lost, released or closed meanwhile."""
        lease = self._lease
        with self.changed:
            while not self._gone():
                if lease._preempt.take_resume():
                    return
                self.changed.wait(timeout=WAKE_EVERY)
            if lease._preempt.take_resume():
                return  # resumed just before it was let go: the resume counts
        raise self._gone_error()  # outside the lock: marking the lease lost takes it

    def _gone(self) -> bool:
        lease = self._lease
        return lease.lost or lease._ended or lease.released or lease._stop.is_set()

    def _gone_error(self) -> VgpuError:
        """Why the lease can no longer be waited for (call without the lease lock)."""
        lease = self._lease
        if lease._ended:
            lease._lose(lease._ended_reason())
        return gone_error(lease)

    # -- the thread -------------------------------------------------------------------------------
    def _follow(self, delay: float) -> None:
        """Read the lease's events (resuming after breaks) and act on them until the lease ends or is let go."""
        lease = self._lease
        if delay:
            self._go.wait(delay)
        last = 0
        backoff = 0.1
        while not lease._stop.is_set():
            try:
                with contextlib.closing(lease.events(last, keepalives=True)) as events:
                    for event in events:
                        last = max(last, event.sequence)
                        backoff = 0.1
                        self._after_event(event)
                        if lease._ended:
                            break  # the final event: the loss is marked below, without waiting for the stream end
            except (LeaseLostError, *GONE):
                break  # the lease is marked lost, which woke any waiter
            except VgpuError as error:
                log.warning("vgpu lease %s: following its events failed, retrying: %s", lease.id, error)
            else:
                if lease._ended:
                    lease._lose(lease._ended_reason())
                    break
            if lease._stop.wait(backoff):
                break
            backoff = min(backoff * 2, FOLLOW_MAX_BACKOFF)
        self.wake()

    def _after_event(self, event: LeaseEvent) -> None:
        lease = self._lease
        if event.type == "preempt":
            lease._runtime_preempt_asked()
        elif event.type == "resized":
            lease._runtime_resized()
        while True:  # a save may be answered with the lease re-granted: then the resume is due at once
            with lease._lock:
                work = lease._preempt.follower_work(can_save=self._on_preempt is not None)
                notice = lease._preempt.notice
            if work is Work.NOTHING:
                break
            self._do(work, notice)
        if event.type == "resized" and self._on_resize is not None:
            self._call_back("on_resize", self._on_resize)

    def _do(self, work: Work, notice: PreemptNotice | None) -> None:
        lease = self._lease
        if work is Work.SAVE and notice is not None:
            try:
                self._save_and_ack(notice, by_follower=True)
            except Exception:  # noqa: BLE001 -- the follower outlives a failed save; the lease shows it
                log.exception("vgpu lease %s: on_preempt or its acknowledgement failed; not acknowledged", lease.id)
        elif work is Work.RESUME:
            try:
                lease._runtime_resume()
            except Exception:  # noqa: BLE001 -- the follower outlives a failed restore; on_resume is not run
                log.exception("vgpu lease %s: restoring its registered state failed", lease.id)
                return
            if self._on_resume is not None:
                self._call_back("on_resume", self._on_resume)

    def _call_back(self, name: str, callback: OnLeaseChange) -> None:
        try:
            callback(self._lease)
        except Exception:  # noqa: BLE001 -- a user callback must not end the follower thread
            log.exception("vgpu lease %s: %s callback raised", self._lease.id, name)

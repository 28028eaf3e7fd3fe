"""The asyncio side of the preemption protocol for one `AsyncLease`: its follower task, checkpoint() and ack.

The twin of `vgpu._private.follower`: the same rules (`vgpu._private.preemption`), on the event loop. The
follower task ("vgpu-follow-<lease id>") reads `AsyncLease.events()`; every lease has one, so the lease's
end is heard at once (`vgpu._private.loss_notice`). Callbacks may be coroutine functions
(awaited) or plain functions (called on the loop thread: a long synchronous save blocks the loop, so make
it `async def` or hand the work to `asyncio.to_thread` inside it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from vgpu._private.errors import (
    LeaseLostError,
    LeaseStateError,
    VgpuError,
)
from vgpu._private.follower import FOLLOW_MAX_BACKOFF, GONE, WAKE_EVERY, gone_error
from vgpu._private.lease_base import log
from vgpu._private.lease_records import LeaseEvent, PreemptNotice
from vgpu._private.preemption import Phase, Work

if TYPE_CHECKING:
    from vgpu._private.async_lease import AsyncLease

AsyncOnPreempt = Callable[["AsyncLease", PreemptNotice], object]
"""on_preempt(lease, notice), a coroutine function or a plain one: save, free the GPU memory, return."""
AsyncOnLeaseChange = Callable[["AsyncLease"], object]
"""on_resume(lease) / on_resize(lease), a coroutine function or a plain one."""


async def _call(callback: Callable[..., object], *args: object) -> None:
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


async def finish_or_cancel(task: asyncio.Task[None], *, let_finish: bool, grace: float) -> None:
    """End a lease's background task: cancel it, or first give it `grace` seconds to end by itself.

    `let_finish` is for a lost lease, whose tasks end on their own and may be running on_lost: cancelling would
    cut the user's callback short.
    """
    if let_finish:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), grace)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class AsyncFollower:
    """Follows one lease's events in a task and runs its part of the preemption protocol."""

    def __init__(
        self,
        lease: AsyncLease,
        *,
        on_preempt: AsyncOnPreempt | None,
        on_resume: AsyncOnLeaseChange | None,
        on_resize: AsyncOnLeaseChange | None,
    ) -> None:
        self._lease = lease
        self._on_preempt = on_preempt
        self._on_resume = on_resume
        self._on_resize = on_resize
        self.changed = asyncio.Event()
        """Set whenever the lease's preemption phase or liveness changes; a waiter clears it first."""
        self._checkpointing = asyncio.Lock()
        self._go = asyncio.Event()
        """Set when the stream must open now (preemption use, or the lease let go): cuts a start delay short."""
        self._loop = asyncio.get_running_loop()
        """The lease's loop (its heartbeat task runs there); the follower task runs there too."""
        self.task: asyncio.Task[None] | None = None

    @property
    def wanted(self) -> bool:
        """Whether callbacks were given, so the task should run from the start."""
        return any(cb is not None for cb in (self._on_preempt, self._on_resume, self._on_resize))

    def start(self, *, delay: float = 0.0) -> None:
        """Start the task once, on the lease's loop (when called there) and unless the lease is let go.

        It opens the stream after `delay` seconds; a later start without delay (preemption use) cuts it short.
        """
        lease = self._lease
        if lease._stop.is_set() or (self.task is not None and (delay or self._go.is_set())):
            return  # the common case: preempt_requested may be read every iteration
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # read outside the loop (e.g. a property from another thread): nothing to start
            return
        if running is not self._loop:
            return
        if not delay:
            self._go.set()
        if self.task is None:
            self.task = asyncio.create_task(self._follow(delay), name=f"vgpu-follow-{lease.id}")

    def wake(self) -> None:
        """Let a waiting checkpoint() (or the task's start delay) look at the lease again: it was let go."""
        self._go.set()
        self.changed.set()

    async def stop(self, grace: float) -> None:
        """End the task (unless it is the caller: a callback releasing its own lease) and wait for it.

        A lost lease's task ends by itself (it may be running on_lost): it gets `grace` seconds before it is cancelled.
        """
        task = self.task
        self.wake()
        if task is not None and task is not asyncio.current_task() and not task.done():
            await finish_or_cancel(task, let_finish=self._lease.lost, grace=grace)

    # -- checkpoint() and ack_preempt() -----------------------------------------------------------
    async def checkpoint(self) -> bool:
        """See `AsyncLease.checkpoint()`."""
        lease = self._lease
        tracker = lease._preempt
        runtime = lease._runtime
        if runtime is not None:
            await asyncio.to_thread(runtime.step)  # the compute share's wait must not block the loop
        if tracker.cooperative and tracker.phase is Phase.RUNNING:
            return False  # the fast path: no RPC
        async with self._checkpointing:
            with lease._lock:
                step = tracker.begin_checkpoint()
                notice = tracker.notice
            if step is Phase.RUNNING:
                return False
            try:
                if step is Phase.SAVING and notice is not None:
                    await self._save_and_ack(notice, by_follower=False)
                await self._await_resume()
                await asyncio.to_thread(lease._runtime_resume)
            finally:
                with lease._lock:
                    tracker.end_checkpoint()
        if self._on_resume is not None:
            await _call(self._on_resume, lease)
        return True

    async def ack_preempt(self) -> None:
        """See `AsyncLease.ack_preempt()`."""
        lease = self._lease
        with lease._lock:
            step = lease._preempt.begin_ack()
        if step is not Phase.SAVING:
            raise LeaseStateError(
                f"lease {lease.id} is {step.value}: its preemption was already acknowledged "
                "(or is being, by checkpoint() or the follower)"
            )
        try:
            await asyncio.to_thread(lease._runtime_suspend)
        except BaseException:
            self._failed(by_follower=False)
            raise
        await self._acknowledge(by_follower=False)
        with lease._lock:
            resumed = lease._preempt.take_unwaited_resume()  # re-granted within the acknowledgement
        if resumed:
            await asyncio.to_thread(lease._runtime_resume)
            if self._on_resume is not None:
                await _call(self._on_resume, lease)

    async def _save_and_ack(self, notice: PreemptNotice, *, by_follower: bool) -> None:
        """on_preempt, then AckPreempt; the caller claimed the notice (the phase is SAVING)."""
        try:
            if self._on_preempt is not None:
                await _call(self._on_preempt, self._lease, notice)
            await asyncio.to_thread(self._lease._runtime_suspend)  # copies to host: off the event loop
        except BaseException:
            self._failed(by_follower=by_follower)
            raise
        await self._acknowledge(by_follower=by_follower)

    async def _acknowledge(self, *, by_follower: bool) -> None:
        lease = self._lease
        try:
            msg = await lease._client.ack_preempt(lease.id, lease.token)
        except LeaseStateError:
            if not await self._reconcile():
                raise
            return
        except GONE as error:
            self._failed(by_follower=by_follower)
            await lease._lose(error.message)
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

    async def _reconcile(self) -> bool:
        """AckPreempt said 'not preempting': read the lease and go on from where it stands."""
        lease = self._lease
        try:
            msg = await lease._client.get_lease(lease.id, lease.token)
        except VgpuError:
            self._failed(by_follower=False)
            return False
        with lease._lock:
            lease._apply_locked(msg)
            return lease._preempt.reconcile(lease.status)

    async def wait_preempt(self, timeout: float | None) -> PreemptNotice | None:
        """See `AsyncLease.wait_preempt()`."""
        lease = self._lease
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._gone():
            if lease._preempt.requested:
                return lease._preempt.notice
            left = WAKE_EVERY if deadline is None else min(WAKE_EVERY, deadline - loop.time())
            if left <= 0:
                return None
            self.changed.clear()  # no await since the check above: no notification can be missed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        raise await self._gone_error()

    async def _await_resume(self) -> None:
        """Wait until the lease is resumed; raise when it ends, is lost, released or closed meanwhile."""
        lease = self._lease
        while not self._gone():
            with lease._lock:
                if lease._preempt.take_resume():
                    return
            self.changed.clear()  # no await since the check above: no notification can be missed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), WAKE_EVERY)
        with lease._lock:
            if lease._preempt.take_resume():
                return  # resumed just before it was let go: the resume counts
        raise await self._gone_error()

    def _gone(self) -> bool:
        lease = self._lease
        return lease.lost or lease._ended or lease.released or lease._stop.is_set()

    async def _gone_error(self) -> VgpuError:
        """Why the lease can no longer be waited for."""
        lease = self._lease
        if lease._ended:
            await lease._lose(lease._ended_reason())
        return gone_error(lease)

    # -- the task ---------------------------------------------------------------------------------
    async def _follow(self, delay: float) -> None:
        """Read the lease's events (resuming after breaks) and act on them until the lease ends or is let go."""
        lease = self._lease
        last = 0
        backoff = 0.1
        try:
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._go.wait(), delay)
            while not lease._stop.is_set():
                try:
                    async with contextlib.aclosing(lease.events(last, keepalives=True)) as events:
                        async for event in events:
                            last = max(last, event.sequence)
                            backoff = 0.1
                            await self._after_event(event)
                            if lease._ended:
                                break  # the final event: the loss is marked below, without waiting for the stream end
                except (LeaseLostError, *GONE):
                    break  # the lease is marked lost, which woke any waiter
                except VgpuError as error:
                    log.warning("vgpu lease %s: following its events failed, retrying: %s", lease.id, error)
                else:
                    if lease._ended:
                        await lease._lose(lease._ended_reason())
                        break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lease._stop.wait(), backoff)
                backoff = min(backoff * 2, FOLLOW_MAX_BACKOFF)
        finally:
            self.changed.set()

    async def _after_event(self, event: LeaseEvent) -> None:
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
            await self._do(work, notice)
        if event.type == "resized" and self._on_resize is not None:
            await self._call_back("on_resize", self._on_resize)

    async def _do(self, work: Work, notice: PreemptNotice | None) -> None:
        lease = self._lease
        if work is Work.SAVE and notice is not None:
            try:
                await self._save_and_ack(notice, by_follower=True)
            except Exception:  # noqa: BLE001 -- the follower outlives a failed save; the lease shows it
                log.exception("vgpu lease %s: on_preempt or its acknowledgement failed; not acknowledged", lease.id)
        elif work is Work.RESUME:
            try:
                await asyncio.to_thread(lease._runtime_resume)
            except Exception:  # noqa: BLE001 -- the follower outlives a failed restore; on_resume is not run
                log.exception("vgpu lease %s: restoring its registered state failed", lease.id)
                return
            if self._on_resume is not None:
                await self._call_back("on_resume", self._on_resume)

    async def _call_back(self, name: str, callback: AsyncOnLeaseChange) -> None:
        try:
            await _call(callback, self._lease)
        except Exception:  # noqa: BLE001 -- a user callback must not end the follower task
            log.exception("vgpu lease %s: %s callback raised", self._lease.id, name)

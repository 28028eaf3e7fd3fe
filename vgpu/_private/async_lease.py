"""`AsyncLease`: the asyncio twin of `Lease`, kept alive by a heartbeat task on the running loop.

A follower task (`vgpu._private.async_follower`) reads the lease's events: it hears of the lease's end at
once and takes part in preemption. It opens its stream at once when on_preempt/on_resume/on_resize is given
or on first use of `preempt_requested`, `checkpoint()` or `ack_preempt()`, else shortly after the grant.
Leaving an `async with` block after a loss raises LeaseLostError (see `vgpu._private.loss_notice`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Final

from vgpu._private import errors, loss_notice
from vgpu._private.async_client import AsyncClient
from vgpu._private.async_follower import AsyncFollower, AsyncOnLeaseChange, AsyncOnPreempt, finish_or_cancel
from vgpu._private.errors import (
    DaemonUnavailableError,
    LeaseEndedError,
    LeaseLostError,
    LeaseNotFoundError,
    LeasePermissionError,
    VgpuError,
)
from vgpu._private.heartbeat_policy import HeartbeatPolicy
from vgpu._private.lease_base import LeaseBase, log
from vgpu._private.lease_records import LeaseEvent, PreemptNotice
from vgpu._private.loss_notice import Cancellers, LostCallback
from vgpu._private.runtime.runtime import RuntimeOptions
from vgpu.api.v1 import types_pb2

WATCH_WINDOW: Final = 300.0
"""Deadline of one WatchLease stream; events() resumes transparently when it passes."""
_MAX_RESUME_BACKOFF: Final = 2.0


class AsyncLease(LeaseBase):
    """A lease this process holds, for asyncio code: `async with`, release()/refresh(), async events().

    Callbacks (coroutine functions are awaited, plain ones called on the loop) run in the task that calls
    `await checkpoint()` once the workload has called it (cooperative mode), else in the follower task,
    which then saves and acknowledges by itself (callback mode); see `Lease` for the thread flavour.
    `on_lost` (plain or coroutine function) runs once, in whichever task notices the loss first.
    """

    def __init__(
        self,
        client: AsyncClient,
        msg: types_pb2.Lease,
        token: str,
        *,
        release_on_exit: bool = True,
        on_finish: Callable[[AsyncLease], None] | None = None,
        on_preempt: AsyncOnPreempt | None = None,
        on_resume: AsyncOnLeaseChange | None = None,
        on_resize: AsyncOnLeaseChange | None = None,
        on_lost: LostCallback | None = None,
        raise_on_lost: bool = True,
        runtime: RuntimeOptions | None = None,
    ) -> None:
        super().__init__(msg, token, on_lost=on_lost, raise_on_lost=raise_on_lost)
        self._runtime_options = runtime or RuntimeOptions()
        self._client = client
        self.release_on_exit = release_on_exit
        """Whether leaving an `async with` block (or closing its pool) releases the lease."""
        self._on_finish = on_finish
        self._stop = asyncio.Event()
        self._finished = False
        self._cancellers = Cancellers()
        self._follower = AsyncFollower(self, on_preempt=on_preempt, on_resume=on_resume, on_resize=on_resize)
        self._notify = self._follower.changed.set
        self._task = asyncio.create_task(self._heartbeat_loop(), name=f"vgpu-heartbeat-{self.id}")
        if self._follower.wanted:
            self._follower.start()
        elif loss_notice.LOSS_WATCH_DELAY is not None:
            self._follower.start(delay=loss_notice.LOSS_WATCH_DELAY)

    # -- ending -----------------------------------------------------------------------------------
    async def release(self) -> None:
        """Give the lease back. Idempotent, and quiet for a lease that already ended or was lost.

        A lease the daemon revoked or expired before this call, unheard of so far, is marked lost (on_lost runs).
        """
        if self.released:
            return
        self._releasing = True
        await self._stop_following()
        try:
            msg = await self._client.release(self.id, self.token)
        except (LeaseEndedError, LeaseNotFoundError):
            pass
        except VgpuError:
            if not self.lost:
                raise
        else:
            self._apply(msg)
            if self._ended_under_us():  # revoked or expired before this release, and not yet heard of
                await self._lose(self._ended_reason())
        if self._mark_released():
            self._finish()

    async def close(self) -> None:
        """Stop heartbeating and following the lease without releasing it (it expires after its TTL)."""
        await self._stop_following()
        self._finish()

    async def _export_env_or_release(self) -> None:
        """Export the environment for the lease's life (acquire's apply=True); when refused, release and raise."""
        try:
            self._export_env_for_life()
        except VgpuError:
            try:
                await self.release()
            except VgpuError as error:
                log.warning("vgpu lease %s: release after a refused apply failed: %s", self.id, error)
                await self.close()
            raise

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Release (or let go) the lease; raise LeaseLostError if it was lost, unless the body raised."""
        if not self.release_on_exit:
            await self.close()
        elif exc is None:
            await self.release()
        else:
            try:
                await self.release()
            except VgpuError as error:  # keep the body's exception; the lease expires after its TTL anyway
                log.warning("vgpu lease %s: release failed while handling %s: %s", self.id, exc_type, error)
                await self.close()
        self._raise_if_lost(body_raised=exc is not None)

    async def _stop_following(self) -> None:
        self._stop.set()
        self._cancel_watches()
        grace = self._client.timeout + 1
        if self._task is not asyncio.current_task() and not self._task.done():
            await finish_or_cancel(self._task, let_finish=self.lost, grace=grace)
        await self._follower.stop(grace)

    def _cancel_watches(self) -> None:
        self._cancellers.cancel_all()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._drop_identity()
        self._close_runtime()
        self._restore_exported_env()
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

    async def refresh(self) -> None:
        """Re-read the lease from the daemon (state, slices, preemption deadline)."""
        self._check_usable()
        try:
            msg = await self._client.get_lease(self.id, self.token)
        except (LeaseEndedError, LeaseNotFoundError, LeasePermissionError) as error:
            await self._lose(error.message)
            raise
        self._apply(msg)
        if self._ended:
            await self._lose(self._ended_reason())

    async def events(self, after_sequence: int = 0, *, keepalives: bool = False) -> AsyncGenerator[LeaseEvent, None]:
        """Events of this lease, resuming after breaks; ends with the lease's final event.

        Raises LeaseLostError when the lease is lost for another reason than ending.
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
            stream = self._client.watch(self.id, self.token, last, deadline=WATCH_WINDOW, cancellers=cancellers)
            try:
                async for msg in stream:
                    backoff = 0.1
                    last = max(last, msg.sequence)
                    self._apply_event(msg)
                    event = LeaseEvent.from_proto(msg)
                    if keepalives or event.type != "keepalive":
                        yield event
            except (LeaseEndedError, LeaseNotFoundError, LeasePermissionError) as error:
                await self._lose(error.message)
                raise
            except VgpuError as error:
                if error.reason == errors.DAEMON_TIMEOUT:
                    continue  # the stream's window passed: resume at once
                if error.reason != errors.CANCELLED and not isinstance(error, DaemonUnavailableError):
                    raise
            else:
                return  # the daemon ended the stream after the lease's final event
            finally:
                await stream.aclose()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, _MAX_RESUME_BACKOFF)

    # -- preemption -------------------------------------------------------------------------------
    async def checkpoint(self) -> bool:
        """Await at iteration boundaries: yield the GPUs here if the daemon asked for them.

        Returns False at once (no RPC) when no preemption is pending. When one is: awaits
        on_preempt(lease, notice), acknowledges (the lease is suspended), waits until it is resumed
        (lease.slices and lease.env then name the new GPUs), awaits on_resume(lease) and returns True. The
        first call puts the lease in cooperative mode, as for `Lease.checkpoint()`.

        Raises what on_preempt raised, without acknowledging, and LeaseLostError (`.reason`: the end
        reason) when the lease ends or is lost meanwhile.
        """
        self._check_usable()
        self._follower.start()
        return await self._follower.checkpoint()

    async def ack_preempt(self) -> None:
        """Acknowledge the pending preemption now (for launchers that checkpoint out of process).

        on_resume runs in the follower task once the lease is resumed, or in this task when the daemon
        re-granted it within the acknowledgement. Raises LeaseStateError when there is nothing to acknowledge.
        """
        self._check_usable()
        self._follower.start()
        await self._follower.ack_preempt()

    async def wait_preempt(self, timeout: float | None = None) -> PreemptNotice | None:
        """Wait until the daemon asks this lease to yield; the notice, or None after `timeout` seconds.

        Returns at once while a notice is pending; raises LeaseLostError when the lease ends or is lost.
        """
        self._check_usable()
        self._follower.start()
        return await self._follower.wait_preempt(timeout)

    def _start_follower(self) -> None:
        self._follower.start()

    # -- heartbeats -------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        policy = HeartbeatPolicy(self.ttl)
        delay = policy.interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
                return
            try:
                answer = await self._client.heartbeat(
                    self.id,
                    self.token,
                    deadline=policy.call_timeout(self._client.timeout),
                    usage=self._usage_report(),
                )
            except VgpuError as error:
                if self._stop.is_set() or error.reason == errors.CLIENT_CLOSED:
                    return
                verdict = policy.failed(error)
                if verdict.lost_reason is not None:
                    self._end_heard = isinstance(error, LeaseEndedError)
                    if self._end_heard:
                        await self._describe_end()  # so that `status` shows how it ended before on_lost runs
                    await self._lose(verdict.lost_reason)
                    return
                delay = verdict.retry_in
                continue
            if self._stop.is_set():
                return
            policy.answered(answer.ttl.seconds)
            self._apply_heartbeat(answer)
            if self._ended:
                await self._lose(await self._describe_end())
                return
            delay = policy.interval

    async def _describe_end(self) -> str:
        with contextlib.suppress(VgpuError):  # the heartbeat already said it ended; details are a nicety
            self._apply(await self._client.get_lease(self.id, self.token))
        return self._ended_reason()

    async def _lose(self, reason: str) -> None:
        if not self._mark_lost(reason):
            return
        self._stop.set()
        self._cancel_watches()
        self._follower.wake()  # a checkpoint() waiting for the resume raises LeaseLostError
        callback = self.on_lost
        if callback is None:
            return
        try:
            result = callback(reason)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 -- a user callback must not end the heartbeat task
            log.exception("vgpu lease %s: on_lost callback raised", self.id)

"""The asyncio twin of `SyncClient`: one grpc.aio channel, deadlines on every call, typed errors.

This is the only asyncio module that touches grpc call objects; nothing above it sees a grpc.RpcError.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar

import grpc

from vgpu._private import errors
from vgpu._private.acquire_retry import AcquireAttempts
from vgpu._private.channels import credential_for, open_aio_channel, target_for, tls_for
from vgpu._private.errors import InternalError, VgpuError
from vgpu._private.lease_records import QueueInfo
from vgpu._private.local_credential import CredentialError, Metadata
from vgpu._private.rpc_errors import credential_error, error_for, failure_of_aio_call
from vgpu._private.tls import TlsConfig
from vgpu.api.v1 import types_pb2, workload_pb2, workload_pb2_grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AsyncClient:
    """The WorkloadService over one grpc.aio channel, closed once."""

    def __init__(self, endpoint: str | None = None, timeout: float = 10.0, tls: TlsConfig | None = None) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise errors.InvalidRequestError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.endpoint = target_for(endpoint)
        self.timeout = float(timeout)
        self.closed = asyncio.Event()
        self.tls = tls_for(self.endpoint, tls)
        self._credential = credential_for(self.endpoint)
        self._channel = open_aio_channel(self.endpoint, self.tls)
        self._stub = workload_pb2_grpc.WorkloadServiceStub(self._channel)

    async def metadata(self) -> Metadata:
        """What proves this process's identity on each call (the credential on a Unix socket; none over TLS)."""
        if self._credential is None:
            return ()
        try:
            return await self._credential.metadata_async(self.timeout)
        except CredentialError as exc:
            raise credential_error(exc, self.endpoint) from None

    def _renewed(self, failure: VgpuError) -> bool:
        """Whether `failure` was a stale credential, now dropped (one retry with a fresh one may succeed)."""
        return self._credential is not None and self._credential.drop_if_stale(failure.reason)

    async def close(self) -> None:
        """Close the channel; calls in flight end with a 'closed' error."""
        if not self.closed.is_set():
            self.closed.set()
            await self._channel.close()

    def closed_error(self) -> VgpuError:
        """The error for using a closed client."""
        return VgpuError(f"the vgpu client for {self.endpoint} is closed", reason=errors.CLIENT_CLOSED)

    def error(self, error: grpc.aio.AioRpcError, *, timeout: float | None) -> VgpuError:
        """Map a failed call to its VgpuError (a call cut by close() reads as 'closed')."""
        if self.closed.is_set():
            return self.closed_error()
        return error_for(failure_of_aio_call(error), endpoint=self.endpoint, timeout=timeout, tls=self.tls)

    async def _unary(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        deadline: float | None = None,
        *,
        lease_call: bool = False,
    ) -> Resp:
        """One call, renewing a stale credential once; `lease_call` waits for a reconnect (see SyncClient)."""
        if self.closed.is_set():
            raise self.closed_error()
        deadline = self.timeout if deadline is None else deadline
        for attempt in range(2):
            try:
                return await rpc(request, timeout=deadline, metadata=await self.metadata(), wait_for_ready=lease_call)
            except grpc.aio.AioRpcError as exc:
                failure = self.error(exc, timeout=deadline)
                if attempt or not self._renewed(failure):
                    raise failure from None
            except grpc.aio.UsageError:  # the channel was closed under us by another task
                raise self.closed_error() from None
        raise AssertionError("unreachable")  # pragma: no cover -- the loop returns or raises

    # -- unary calls ------------------------------------------------------------------------------
    async def release(self, lease_id: str, token: str) -> types_pb2.Lease:
        """Release; the daemon answers with the ended lease (idempotent)."""
        request = workload_pb2.ReleaseRequest(lease_id=lease_id, token=token)
        return (await self._unary(self._stub.Release, request)).lease

    async def heartbeat(
        self, lease_id: str, token: str, *, deadline: float, usage: workload_pb2.Usage | None = None
    ) -> workload_pb2.HeartbeatResponse:
        """One heartbeat with its own (short) deadline, carrying the workload's last usage report if any."""
        request = workload_pb2.HeartbeatRequest(lease_id=lease_id, token=token, usage=usage)
        return await self._unary(self._stub.Heartbeat, request, deadline, lease_call=True)

    async def ack_preempt(self, lease_id: str, token: str) -> types_pb2.Lease:
        """Acknowledge a preemption: the daemon frees the slices and answers with the suspended lease."""
        request = workload_pb2.AckPreemptRequest(lease_id=lease_id, token=token)
        return (await self._unary(self._stub.AckPreempt, request, lease_call=True)).lease

    async def get_lease(self, lease_id: str, token: str) -> types_pb2.Lease:
        """The lease as the daemon sees it now."""
        request = workload_pb2.GetLeaseRequest(lease_id=lease_id, token=token)
        return (await self._unary(self._stub.GetLease, request, lease_call=True)).lease

    async def list_leases(self, owner_user: str, project: str) -> list[types_pb2.Lease]:
        """Live leases, optionally filtered."""
        request = workload_pb2.ListLeasesRequest(owner_user=owner_user, project=project)
        return list((await self._unary(self._stub.ListLeases, request)).leases)

    # -- streams ----------------------------------------------------------------------------------
    async def acquire(
        self,
        request: workload_pb2.AcquireRequest,
        attempts: AcquireAttempts,
        on_queued: Callable[[QueueInfo], object] | None,
    ) -> types_pb2.Lease:
        """Run the Acquire stream to its lease, resending the same request after a broken connection."""
        renewed = False
        while True:
            if self.closed.is_set():
                raise self.closed_error()
            deadline = attempts.start_attempt()
            call = self._stub.Acquire(
                request, timeout=deadline, wait_for_ready=attempts.wait_for_ready, metadata=await self.metadata()
            )
            try:
                async for response in call:
                    attempts.saw_daemon()
                    if response.HasField("lease"):
                        await self._finish_stream(call)
                        return response.lease
                    if response.HasField("queued"):
                        info = attempts.queued(QueueInfo.from_proto(response.queued))
                        if on_queued is not None:
                            result = on_queued(info)
                            if asyncio.iscoroutine(result):
                                await result
                failure: VgpuError = InternalError("vgpud ended the acquire stream without granting a lease")
            except grpc.aio.AioRpcError as exc:
                failure = attempts.classify(self.error(exc, timeout=deadline))
            except BaseException:
                call.cancel()  # the callback raised, or this task was cancelled: withdraw the request
                raise
            if not renewed and self._renewed(failure):
                renewed = True
                continue
            delay = attempts.retry_delay(failure)
            if delay is None:
                raise failure
            try:
                await asyncio.wait_for(self.closed.wait(), delay)
            except TimeoutError:
                continue
            raise self.closed_error()

    @staticmethod
    async def _finish_stream(
        call: grpc.aio.UnaryStreamCall[workload_pb2.AcquireRequest, workload_pb2.AcquireResponse],
    ) -> None:
        """Read the acquire stream to its end so the daemon sees the lease delivered, not withdrawn."""
        with contextlib.suppress(grpc.aio.AioRpcError):  # the lease is in hand; a late error changes nothing
            async for _ in call:
                pass

    async def watch(
        self,
        lease_id: str,
        token: str,
        after_sequence: int,
        *,
        deadline: float,
        cancellers: set[Callable[[], object]],
    ) -> AsyncGenerator[workload_pb2.WatchLeaseResponse, None]:
        """One WatchLease stream with a deadline; its cancel sits in `cancellers` while it is open."""
        if self.closed.is_set():
            raise self.closed_error()
        request = workload_pb2.WatchLeaseRequest(lease_id=lease_id, token=token, after_sequence=after_sequence)
        call = self._stub.WatchLease(request, timeout=deadline, metadata=await self.metadata())
        cancellers.add(call.cancel)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            failure = self.error(exc, timeout=deadline)
            self._renewed(failure)  # a stale credential is dropped: the follower's next attempt fetches a new one
            raise failure from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller's task is being cancelled: let it
            # only the call was cancelled (release, close or loss of the lease)
            raise VgpuError("the lease watch was cancelled", reason=errors.CANCELLED) from None
        finally:
            cancellers.discard(call.cancel)
            call.cancel()

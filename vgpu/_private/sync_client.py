"""One channel to vgpud for a sync Pool and its leases: every call gets a deadline and typed errors.

This is the only sync module that touches grpc call objects; nothing above it sees a grpc.RpcError.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

import grpc

from vgpu._private import errors
from vgpu._private.acquire_retry import AcquireAttempts
from vgpu._private.channels import credential_for, open_sync_channel, target_for, tls_for
from vgpu._private.errors import InternalError, VgpuError
from vgpu._private.lease_records import QueueInfo
from vgpu._private.local_credential import CredentialError, Metadata
from vgpu._private.rpc_errors import credential_error, error_for, failure_of_sync_call
from vgpu._private.tls import TlsConfig
from vgpu.api.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2, workload_pb2, workload_pb2_grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class SyncClient:
    """The WorkloadService over one sync channel, closed once."""

    def __init__(self, endpoint: str | None = None, timeout: float = 10.0, tls: TlsConfig | None = None) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise errors.InvalidRequestError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.endpoint = target_for(endpoint)
        self.timeout = float(timeout)
        self.closed = threading.Event()
        self.tls = tls_for(self.endpoint, tls)
        self._credential = credential_for(self.endpoint)
        self._channel = open_sync_channel(self.endpoint, self.tls)
        self._stub = workload_pb2_grpc.WorkloadServiceStub(self._channel)

    def metadata(self) -> Metadata:
        """What proves this process's identity on each call (the credential on a Unix socket; none over TLS)."""
        if self._credential is None:
            return ()
        try:
            return self._credential.metadata(self.timeout)
        except CredentialError as exc:
            raise credential_error(exc, self.endpoint) from None

    def _renewed(self, failure: VgpuError) -> bool:
        """Whether `failure` was a stale credential, now dropped (one retry with a fresh one may succeed)."""
        return self._credential is not None and self._credential.drop_if_stale(failure.reason)

    def close(self) -> None:
        """Close the channel; calls in flight end with a 'closed' error."""
        if not self.closed.is_set():
            self.closed.set()
            self._channel.close()

    def closed_error(self) -> VgpuError:
        """The error for using a closed client."""
        return VgpuError(f"the vgpu client for {self.endpoint} is closed", reason=errors.CLIENT_CLOSED)

    def error(self, error: grpc.RpcError, *, timeout: float | None) -> VgpuError:
        """Map a failed call to its VgpuError (a call cut by close() reads as 'closed')."""
        if self.closed.is_set():
            return self.closed_error()
        return error_for(failure_of_sync_call(error), endpoint=self.endpoint, timeout=timeout, tls=self.tls)

    def _unary(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None = None,
        *,
        lease_call: bool = False,
    ) -> Resp:
        """One call, renewing a stale credential once.

        `lease_call`: about a lease this process holds, so the daemon was there; the call waits (within its
        deadline) for a reconnect instead of failing at once (a daemon restart is not a lost lease).
        """
        if self.closed.is_set():
            raise self.closed_error()
        deadline = self.timeout if timeout is None else timeout
        for attempt in range(2):
            try:
                return rpc(request, timeout=deadline, metadata=self.metadata(), wait_for_ready=lease_call)
            except grpc.RpcError as exc:
                failure = self.error(exc, timeout=deadline)
                if attempt or not self._renewed(failure):
                    raise failure from None
            except ValueError:  # grpc refuses calls on a channel closed under us by another thread
                if self.closed.is_set():
                    raise self.closed_error() from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover -- the loop returns or raises

    # -- unary calls ------------------------------------------------------------------------------
    def release(self, lease_id: str, token: str) -> types_pb2.Lease:
        """Release; the daemon answers with the ended lease (idempotent)."""
        request = workload_pb2.ReleaseRequest(lease_id=lease_id, token=token)
        return self._unary(self._stub.Release, request).lease

    def heartbeat(
        self, lease_id: str, token: str, *, timeout: float, usage: workload_pb2.Usage | None = None
    ) -> workload_pb2.HeartbeatResponse:
        """One heartbeat with its own (short) deadline, carrying the workload's last usage report if any."""
        request = workload_pb2.HeartbeatRequest(lease_id=lease_id, token=token, usage=usage)
        return self._unary(self._stub.Heartbeat, request, timeout, lease_call=True)

    def ack_preempt(self, lease_id: str, token: str) -> types_pb2.Lease:
        """Acknowledge a preemption: the daemon frees the slices and answers with the suspended lease."""
        request = workload_pb2.AckPreemptRequest(lease_id=lease_id, token=token)
        return self._unary(self._stub.AckPreempt, request, lease_call=True).lease

    def get_lease(self, lease_id: str, token: str) -> types_pb2.Lease:
        """The lease as the daemon sees it now."""
        request = workload_pb2.GetLeaseRequest(lease_id=lease_id, token=token)
        return self._unary(self._stub.GetLease, request, lease_call=True).lease

    def list_leases(self, owner_user: str, project: str) -> list[types_pb2.Lease]:
        """Live leases, optionally filtered."""
        request = workload_pb2.ListLeasesRequest(owner_user=owner_user, project=project)
        return list(self._unary(self._stub.ListLeases, request).leases)

    # -- streams ----------------------------------------------------------------------------------
    def acquire(
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
                request, timeout=deadline, wait_for_ready=attempts.wait_for_ready, metadata=self.metadata()
            )
            try:
                for response in call:
                    attempts.saw_daemon()
                    if response.HasField("lease"):
                        self._finish_stream(call)
                        return response.lease
                    if response.HasField("queued"):
                        info = attempts.queued(QueueInfo.from_proto(response.queued))
                        if on_queued is not None:
                            on_queued(info)
                failure: VgpuError = InternalError("vgpud ended the acquire stream without granting a lease")
            except grpc.RpcError as exc:
                failure = attempts.classify(self.error(exc, timeout=deadline))
            except BaseException:
                call.cancel()  # the caller's callback raised, or an interrupt: withdraw the request
                raise
            if not renewed and self._renewed(failure):
                renewed = True
                continue
            delay = attempts.retry_delay(failure)
            if delay is None:
                raise failure
            if self.closed.wait(delay):
                raise self.closed_error()

    @staticmethod
    def _finish_stream(call: Iterator[workload_pb2.AcquireResponse]) -> None:
        """Read the acquire stream to its end so the daemon sees the lease delivered, not withdrawn."""
        with contextlib.suppress(grpc.RpcError):  # the lease is in hand; a late error changes nothing
            for _ in call:
                pass

    def run_job(self, inputs: Iterator[jobs_pb2.RunJobRequest], *, timeout: float) -> Iterator[jobs_pb2.RunJobResponse]:
        """A RunJob call (a job on every node of a lease): iterate it for events, `.cancel()` it to stop the job."""
        if self.closed.is_set():
            raise self.closed_error()
        stub = jobs_pb2_grpc.JobServiceStub(self._channel)
        call: Iterator[jobs_pb2.RunJobResponse] = stub.RunJob(inputs, timeout=timeout, metadata=self.metadata())
        return call

    def watch(
        self,
        lease_id: str,
        token: str,
        after_sequence: int,
        *,
        timeout: float,
        cancellers: set[Callable[[], object]],
    ) -> Generator[workload_pb2.WatchLeaseResponse, None, None]:
        """One WatchLease stream with a deadline; its cancel sits in `cancellers` while it is open."""
        if self.closed.is_set():
            raise self.closed_error()
        request = workload_pb2.WatchLeaseRequest(lease_id=lease_id, token=token, after_sequence=after_sequence)
        call = self._stub.WatchLease(request, timeout=timeout, metadata=self.metadata())
        cancellers.add(call.cancel)
        try:
            yield from call
        except grpc.RpcError as exc:
            failure = self.error(exc, timeout=timeout)
            self._renewed(failure)  # a stale credential is dropped: the follower's next attempt fetches a new one
            raise failure from None
        finally:
            cancellers.discard(call.cancel)
            call.cancel()

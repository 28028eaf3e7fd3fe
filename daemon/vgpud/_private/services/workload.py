"""WorkloadService: acquire, release, heartbeat, get/list, and the lease event stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import duration_pb2

from vgpu._private import reasons
from vgpu.api.v1 import types_pb2, workload_pb2, workload_pb2_grpc
from vgpud._private.acquire_queue import Waiter
from vgpud._private.core.model import LeaseRecord, LeaseState
from vgpud._private.pool_view import Versioned
from vgpud._private.refusal import Refusal
from vgpud._private.services import convert, validation
from vgpud._private.services.serving import Serving
from vgpud._private.services.status import guarded_stream, guarded_unary

Ctx = grpc.aio.ServicerContext[Any, Any]

_EVENT_FOR_STATE = {
    LeaseState.GRANTED: workload_pb2.LEASE_EVENT_TYPE_GRANTED,
    LeaseState.RESIZING: workload_pb2.LEASE_EVENT_TYPE_RESIZED,
    LeaseState.PREEMPTING: workload_pb2.LEASE_EVENT_TYPE_PREEMPT,
    LeaseState.SUSPENDED: workload_pb2.LEASE_EVENT_TYPE_SUSPENDED,
    LeaseState.RELEASED: workload_pb2.LEASE_EVENT_TYPE_RELEASED,
    LeaseState.REVOKED: workload_pb2.LEASE_EVENT_TYPE_REVOKED,
    LeaseState.EXPIRED: workload_pb2.LEASE_EVENT_TYPE_EXPIRED,
}


def _deadline(context: Ctx, cap: float) -> float:
    """Seconds this call may still take: the client's deadline, capped."""
    remaining = context.time_remaining()
    return cap if remaining is None else max(0.0, min(cap, remaining))


class WorkloadService(workload_pb2_grpc.WorkloadServiceServicer):
    """The workload door (see workload.proto)."""

    def __init__(self, serving: Serving) -> None:
        self._s = serving

    def report_error(self, method: str, code: str) -> None:
        """Count an error answer (status.guarded_* call this)."""
        self._s.on_error(method, code)

    def _lease_msg(self, record: LeaseRecord, token: str = "") -> types_pb2.Lease:
        return convert.lease(record, node=self._s.node, endpoint=self._s.endpoint, token=token)

    # -- acquire -----------------------------------------------------------------------------------
    @guarded_stream("Acquire")
    async def Acquire(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.AcquireRequest, context: Ctx
    ) -> AsyncIterator[workload_pb2.AcquireResponse]:
        """Grant now, or queue (wait=true) and stream positions until granted."""
        s = self._s
        started = time.perf_counter()
        if s.stopping.is_set():
            raise Refusal(reasons.SHUTTING_DOWN, "vgpud is shutting down; retry in a moment")
        spec = validation.acquire(
            request,
            local_node=s.node,
            known_models=s.known_models,
            default_ttl=s.default_ttl,
            ttl_bounds=s.ttl_bounds,
        )
        outcome = "granted"
        try:
            if not (request.wait and len(s.queue)):
                try:
                    record, token = await s.allocator.acquire(spec)
                except Refusal as refusal:
                    if not (request.wait and refusal.reason == reasons.NO_CAPACITY):
                        raise
                else:
                    yield workload_pb2.AcquireResponse(lease=self._lease_msg(record, token))
                    return
            outcome = "queued"
            waiter = s.queue.enqueue(spec)
            delivered = False
            try:
                async for update in self._wait(waiter, context):
                    yield update
                    delivered = update.HasField("lease")
                outcome = "granted_after_wait"
            finally:
                if not delivered:
                    await s.queue.withdraw(waiter)
        except Refusal as refusal:
            outcome = refusal.reason.lower()
            raise
        finally:
            s.on_acquire(time.perf_counter() - started, outcome)

    async def _wait(self, waiter: Waiter, context: Ctx) -> AsyncIterator[workload_pb2.AcquireResponse]:
        s = self._s
        deadline = time.monotonic() + _deadline(context, s.max_queue_wait)
        last: tuple[int, int] | None = None
        stopping = asyncio.ensure_future(s.stopping.wait())
        try:
            while not waiter.outcome.done():
                pos = s.queue.position(waiter)
                if (pos.position, pos.length) != last and pos.position:
                    last = (pos.position, pos.length)
                    status = types_pb2.QueueStatus(position=pos.position, queue_length=pos.length, reason=pos.reason)
                    if pos.estimated_wait_s is not None:
                        status.estimated_wait.CopyFrom(duration_pb2.Duration(seconds=int(pos.estimated_wait_s)))
                    yield workload_pb2.AcquireResponse(queued=status)
                waiter.moved.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Refusal(
                        reasons.QUEUE_TIMEOUT,
                        f"no capacity before the deadline (queue position {pos.position}): {pos.reason}",
                    )
                moved = asyncio.ensure_future(waiter.moved.wait())
                try:
                    pending: set[asyncio.Future[Any]] = {waiter.outcome, moved, stopping}
                    await asyncio.wait(pending, timeout=min(remaining, 5.0))
                finally:
                    moved.cancel()
                if s.stopping.is_set() and not waiter.outcome.done():
                    raise Refusal(reasons.SHUTTING_DOWN, "vgpud is shutting down; retry to keep your place")
        finally:
            stopping.cancel()
        record, token = waiter.outcome.result()
        yield workload_pb2.AcquireResponse(lease=self._lease_msg(record, token))

    # -- lease operations --------------------------------------------------------------------------
    @guarded_unary("Release")
    async def Release(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.ReleaseRequest, context: Ctx
    ) -> workload_pb2.ReleaseResponse:
        """End the lease; idempotent."""
        lease_id, token = validation.lease_ref(request.lease_id, request.token)
        await self._s.allocator.owned(lease_id, token)
        ended = await self._s.allocator.end(
            lease_id, LeaseState.RELEASED, reasons.END_RELEASED, "released by its client"
        )
        return workload_pb2.ReleaseResponse(lease=self._lease_msg(ended))

    @guarded_unary("Heartbeat")
    async def Heartbeat(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.HeartbeatRequest, context: Ctx
    ) -> workload_pb2.HeartbeatResponse:
        """Extend the lease's liveness."""
        lease_id, token = validation.lease_ref(request.lease_id, request.token)
        lease = await self._s.allocator.owned(lease_id, token)
        left = await self._s.allocator.refresh(lease.value)
        return workload_pb2.HeartbeatResponse(
            state=convert.LEASE_STATE[lease.value.state], ttl=duration_pb2.Duration(seconds=left)
        )

    @guarded_unary("GetLease")
    async def GetLease(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.GetLeaseRequest, context: Ctx
    ) -> workload_pb2.GetLeaseResponse:
        """The lease as it stands."""
        lease_id, token = validation.lease_ref(request.lease_id, request.token)
        lease = await self._s.allocator.owned(lease_id, token)
        return workload_pb2.GetLeaseResponse(lease=self._lease_msg(lease.value))

    @guarded_unary("ListLeases")
    async def ListLeases(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.ListLeasesRequest, context: Ctx
    ) -> workload_pb2.ListLeasesResponse:
        """Live leases, optionally of one owner user and project."""
        user = validation.bounded_text("owner_user", request.owner_user)
        project = validation.bounded_text("project", request.project)
        leases = [
            v.value
            for v in self._s.view.live_leases()
            if (not user or v.value.owner.user == user) and (not project or v.value.project == project)
        ]
        leases.sort(key=lambda r: r.created_at)
        return workload_pb2.ListLeasesResponse(leases=[self._lease_msg(r) for r in leases])

    # -- events ------------------------------------------------------------------------------------
    @guarded_stream("WatchLease")
    async def WatchLease(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.WatchLeaseRequest, context: Ctx
    ) -> AsyncIterator[workload_pb2.WatchLeaseResponse]:
        """State changes of one lease; keeps it alive while open."""
        s = self._s
        lease_id, token = validation.lease_ref(request.lease_id, request.token)
        current = await s.allocator.owned(lease_id, token)
        updates = s.view.listen_lease(lease_id)
        stopping = asyncio.ensure_future(s.stopping.wait())
        try:
            last = request.after_sequence
            current = s.view.lease(lease_id) or current
            if last == 0 or current.revision > last:
                kind = workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT if last == 0 else _EVENT_FOR_STATE[current.value.state]
                yield self._event(current, kind)
                last = current.revision
            if current.value.state.ended:
                return
            interval = max(0.5, current.value.ttl_seconds / 3)
            while True:
                getter = asyncio.ensure_future(updates.get())
                try:
                    done, _ = await asyncio.wait({getter, stopping}, timeout=interval)
                finally:
                    getter.cancel()
                if stopping in done:
                    raise Refusal(reasons.SHUTTING_DOWN, "vgpud is shutting down; resume with after_sequence")
                if getter in done and not getter.cancelled():
                    record = getter.result()
                    if record.revision <= last:
                        continue
                    last = record.revision
                    yield self._event(record, _EVENT_FOR_STATE[record.value.state])
                    if record.value.state.ended:
                        return
                    continue
                with contextlib.suppress(Refusal):
                    await s.allocator.refresh(current.value)
                latest = s.view.lease(lease_id) or current
                yield self._event(Versioned(latest.value, last), workload_pb2.LEASE_EVENT_TYPE_KEEPALIVE)
        finally:
            stopping.cancel()
            s.view.unlisten_lease(lease_id, updates)

    def _event(self, record: Versioned[LeaseRecord], kind: int) -> workload_pb2.WatchLeaseResponse:
        return workload_pb2.WatchLeaseResponse(
            sequence=record.revision,
            type=kind,  # type: ignore[arg-type]  # enum values are ints on the wire
            time=convert.timestamp(time.time()),
            lease=self._lease_msg(record.value),
        )

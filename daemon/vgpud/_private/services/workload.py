"""WorkloadService: acquire, release, heartbeat, get/list, and the lease event stream."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, ClassVar, Literal

import grpc
from google.protobuf import duration_pb2

from vgpu._private import reasons
from vgpu.api.v1 import types_pb2, workload_pb2, workload_pb2_grpc
from vgpud._private.auth.access import check_owner, sees_everything
from vgpud._private.auth.gate import caller
from vgpud._private.auth.owner import owner_of
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import LeaseState
from vgpud._private.core.projects import DEFAULT_PROJECT
from vgpud._private.grants.allocator import AcquireSpec
from vgpud._private.lease_tokens import lease_identity, lease_token
from vgpud._private.pool_view import Versioned
from vgpud._private.refusal import Refusal
from vgpud._private.services import convert, validation
from vgpud._private.services.quota_gate import fast_path_allowed, goes_to_queue
from vgpud._private.services.serving import Serving
from vgpud._private.services.status import GuardedServicer, guarded_stream, guarded_unary
from vgpud._private.store.base import StoreError

Ctx = grpc.aio.ServicerContext[Any, Any]

_EVENT_FOR_STATE = {
    LeaseState.GRANTED: workload_pb2.LEASE_EVENT_TYPE_GRANTED,
    LeaseState.RESIZING: workload_pb2.LEASE_EVENT_TYPE_RESIZED,
    LeaseState.PENDING: workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT,
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


class WorkloadService(GuardedServicer, workload_pb2_grpc.WorkloadServiceServicer):
    """The workload door (see workload.proto)."""

    service_name: ClassVar[str] = "vgpu.api.v1.WorkloadService"

    def __init__(self, serving: Serving) -> None:
        self._s = serving

    def _lease_msg(self, record: LeaseRecord, token: str = "", *, redact: bool = False) -> types_pb2.Lease:
        """The lease as the caller may see it; `redact`: without owner and environment (someone else's lease)."""
        s = self._s
        if redact:
            return convert.redacted(convert.lease(record.delivered, node=s.node, endpoint=s.endpoint))
        others = {slice_.node for slice_ in record.slices} - {s.node}
        endpoints = {}
        for name in others:
            live = s.view.node(name)
            if live is not None:
                endpoints[name] = live.endpoint
        return convert.lease(
            record.delivered,
            node=s.node,
            endpoint=s.endpoint,
            token=token,
            endpoints=endpoints,
            mps_pipes=s.mps_pipes(record),
        )

    # -- acquire -----------------------------------------------------------------------------------
    @guarded_stream("Acquire")
    async def Acquire(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.AcquireRequest, context: Ctx
    ) -> AsyncIterator[workload_pb2.AcquireResponse]:
        """Grant now on this node, or go through the pool-wide queue (waiting, other nodes, any node)."""
        s = self._s
        started = time.perf_counter()
        if s.stopping.is_set():
            raise Refusal(reasons.SHUTTING_DOWN, "vgpud is shutting down; retry in a moment")
        spec = validation.acquire(
            request,
            local_node=s.node,
            known_models=s.known_models,
            known_profiles=s.known_profiles,
            default_ttl=s.default_ttl,
            ttl_bounds=s.ttl_bounds,
        )
        spec = validation.project_and_priority(spec, s.view.quotas().keys(), s.classes)
        who = caller()
        quota = s.view.quota(spec.project or DEFAULT_PROJECT)
        s.access.check_acquire(who, spec.project, quota.value if quota else None, s.classes.get(spec.priority))
        spec = replace(spec, owner=owner_of(who, s.node, request.owner.description))
        outcome = "granted"
        try:
            if spec.node and spec.node != s.node:
                self._check_target(spec.node)
            local = spec.node == s.node
            if local and not (request.wait and s.queue.waiting_for(s.node)) and fast_path_allowed(s, spec):
                try:
                    record, token = await s.allocator.acquire(spec)
                except Refusal as refusal:
                    if not goes_to_queue(refusal, wait=request.wait):
                        raise
                else:
                    check_owner(who, record)
                    record = await self._realised(record, context)
                    yield workload_pb2.AcquireResponse(lease=self._lease_msg(record, token))
                    return
            outcome = "queued"
            async for update in self._through_queue(spec, request.wait, context):
                yield update
            outcome = "granted_after_wait"
        except Refusal as refusal:
            outcome = refusal.reason.lower()
            raise
        finally:
            s.on_acquire(time.perf_counter() - started, outcome)

    def _owner_only(self, lease: Versioned[LeaseRecord], method: str) -> Versioned[LeaseRecord]:
        """The lease if the caller owns it or is an admin; an admin acting on another's lease is audited."""
        who = caller()
        check_owner(who, lease.value)
        audit = self._s.audit
        if who.admin and not who.same_person(lease.value.owner.user) and audit is not None and method != "Heartbeat":
            audit.allowed(who, f"WorkloadService/{method}", f"lease={lease.value.id}", "on another user's lease")
        return lease

    def _check_target(self, node: str) -> None:
        """Clear refusals for a request naming another node that cannot take it."""
        view = self._s.view
        if view.node(node) is None:
            if view.gpus_of(node):
                raise Refusal(reasons.NODE_DOWN, f"node {node} is down (its daemon stopped answering); ask another")
            raise Refusal(reasons.NODE_NOT_FOUND, f"no node {node!r} in this pool (see vgpuctl nodes)")
        if view.node_config(node).value.draining:
            raise Refusal(reasons.NODE_DRAINING, f"node {node} is draining and takes no new work")

    async def _through_queue(
        self, spec: AcquireSpec, wait: bool, context: Ctx
    ) -> AsyncIterator[workload_pb2.AcquireResponse]:
        s = self._s
        existing = await s.allocator.existing(spec.request_id)
        if existing is not None:
            check_owner(caller(), existing[0])
            yield workload_pb2.AcquireResponse(lease=self._lease_msg(*existing))
            return
        lease_id = lease_identity(spec.request_id)
        token = lease_token(lease_id, spec.request_id)
        cap = s.max_queue_wait if wait else s.rpc_timeout
        deadline = time.monotonic() + _deadline(context, cap)
        queued = await s.queue.submit(spec, lease_id, token, wait=wait)
        delivered = False
        try:
            async for update in s.queue.follow(queued, deadline):
                if isinstance(update, LeaseRecord):
                    delivered = True
                    ready = await self._realised(update, context)
                    yield workload_pb2.AcquireResponse(lease=self._lease_msg(ready, token))
                    return
                status = types_pb2.QueueStatus(
                    position=update.position, queue_length=update.length, reason=update.reason
                )
                if update.estimated_wait_s:
                    status.estimated_wait.CopyFrom(duration_pb2.Duration(seconds=math.ceil(update.estimated_wait_s)))
                yield workload_pb2.AcquireResponse(queued=status)
        finally:
            if not delivered:
                s.queue.withdraw(lease_id)

    async def _realised(self, record: LeaseRecord, context: Ctx) -> LeaseRecord:
        """The lease once its node daemon has created every MIG instance of it (at once for other slices).

        If creation fails the lease has ended and the caller hears why; if the caller's deadline comes
        first, the lease is released so its instances are not left to nobody.
        """
        view = self._s.view
        deadline = time.monotonic() + _deadline(context, self._s.rpc_timeout)
        while True:
            generation = view.generation
            current = view.lease(record.id)
            record = current.value if current is not None else record
            if record.state.ended:
                detail = f": {record.end_message}" if record.end_message else ""
                raise Refusal(
                    reasons.LEASE_ENDED, f"lease {record.id} ended before delivery ({record.end_reason}{detail})"
                )
            if not record.waiting_for_mig:
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._s.allocator.end(
                    record.id, LeaseState.RELEASED, reasons.END_RELEASED, "acquire gave up waiting for its MIG instance"
                )
                raise Refusal(
                    reasons.NO_CAPACITY,
                    "the MIG instance was not created before the deadline (is the node daemon of "
                    f"{record.slices[0].node} running?); the lease was released, retry with a longer timeout",
                )
            await view.wait_changed(generation, timeout=min(remaining, 1.0))

    # -- lease operations --------------------------------------------------------------------------
    @guarded_unary("Release")
    async def Release(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.ReleaseRequest, context: Ctx
    ) -> workload_pb2.ReleaseResponse:
        """End the lease; idempotent."""
        lease_id, token = validation.lease_ref(request.lease_id, request.token)
        self._owner_only(await self._s.allocator.owned(lease_id, token), "Release")
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
        usage = request.usage
        socket = validation.identity_socket(usage.identity_socket)
        lease = self._owner_only(await self._s.allocator.owned(lease_id, token), "Heartbeat")
        left = await self._s.allocator.refresh(lease.value)
        busy_milli = min(usage.utilization_milli, 1000)
        if usage.reported and lease.value.state is LeaseState.GRANTED:
            await self._s.idle.observe(lease.value, busy_milli)
        if self._s.watchdog is not None and (usage.reported or socket):
            self._s.watchdog.observe(
                lease.value,
                reported=usage.reported,
                memory=usage.memory_bytes,
                utilization_milli=busy_milli,
                socket=socket,
            )
        answer = workload_pb2.HeartbeatResponse(
            state=convert.LEASE_STATE[lease.value.state], ttl=duration_pb2.Duration(seconds=left)
        )
        if lease.value.state is LeaseState.PREEMPTING:
            answer.preempt_deadline.CopyFrom(convert.timestamp(lease.value.preempt_deadline))
        elif lease.value.state is LeaseState.GRANTED:
            answer.gpu_otherwise_idle = self._s.gpu_otherwise_idle(lease.value)
        return answer

    @guarded_unary("AckPreempt")
    async def AckPreempt(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.AckPreemptRequest, context: Ctx
    ) -> workload_pb2.AckPreemptResponse:
        """The workload checkpointed: free its slices, suspend the lease; it resumes when capacity frees."""
        lease_id, token = validation.lease_ref(request.lease_id, request.token)
        current = self._owner_only(await self._s.allocator.owned(lease_id, token), "AckPreempt")
        suspended = await self._s.transitions.acknowledge(lease_id)
        asked = current.value.last_step("preempt")
        if current.value.state is LeaseState.PREEMPTING and asked:
            self._s.on_preempted(self._s.allocator.clock() - asked, "acknowledged")
        return workload_pb2.AckPreemptResponse(lease=self._lease_msg(suspended))

    @guarded_unary("GetLease")
    async def GetLease(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.GetLeaseRequest, context: Ctx
    ) -> workload_pb2.GetLeaseResponse:
        """The lease as it stands."""
        lease_id, token = validation.lease_ref(request.lease_id, request.token)
        lease = self._owner_only(await self._s.allocator.owned(lease_id, token), "GetLease")
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
        who = caller()
        return workload_pb2.ListLeasesResponse(
            leases=[self._lease_msg(r, redact=not sees_everything(who, r)) for r in leases]
        )

    # -- events ------------------------------------------------------------------------------------
    @guarded_stream("WatchLease")
    async def WatchLease(  # noqa: N802 -- gRPC method name
        self, request: workload_pb2.WatchLeaseRequest, context: Ctx
    ) -> AsyncIterator[workload_pb2.WatchLeaseResponse]:
        """State changes of one lease; keeps it alive while open."""
        s = self._s
        lease_id, token = validation.lease_ref(request.lease_id, request.token)
        current = self._owner_only(await s.allocator.owned(lease_id, token), "WatchLease")
        updates = s.view.listen_lease(lease_id)
        stopping = asyncio.ensure_future(s.stopping.wait())
        try:
            last = request.after_sequence
            current = s.view.lease(lease_id) or current
            if last == 0 or (current.revision > last and not _unrealised(current.value)):
                kind = workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT if last == 0 else event_kind(current.value)
                yield self._event(current, kind)
                last = current.revision
            if current.value.state.ended:
                return
            interval = max(0.5, current.value.ttl_seconds / 3)
            keepalive_at = time.monotonic() + interval
            while True:
                record = await _next_change(updates, stopping, keepalive_at)
                if record is not None:
                    if record.revision <= last or _unrealised(record.value):
                        continue
                    last = record.revision
                    yield self._event(record, event_kind(record.value))
                    if record.value.state.ended:
                        return
                    continue
                keepalive_at = time.monotonic() + interval
                try:
                    await s.allocator.refresh(current.value)
                except Refusal as refusal:
                    if refusal.reason == reasons.LEASE_ENDED and "NODE_LOST" in refusal.message:
                        raise
                except StoreError:
                    pass  # etcd is briefly away; the next keepalive tries again
                latest = s.view.lease(lease_id) or current
                yield self._event(Versioned(latest.value, last), workload_pb2.LEASE_EVENT_TYPE_KEEPALIVE)
        finally:
            stopping.cancel()
            s.view.unlisten_lease(lease_id, updates)

    def _event(self, record: Versioned[LeaseRecord], kind: int) -> workload_pb2.WatchLeaseResponse:
        msg = self._lease_msg(record.value)
        event = workload_pb2.WatchLeaseResponse(
            sequence=record.revision,
            type=kind,  # type: ignore[arg-type]  # enum values are ints on the wire
            time=convert.timestamp(time.time()),
            lease=msg,
        )
        if kind == workload_pb2.LEASE_EVENT_TYPE_PREEMPT:
            event.preempt.deadline.CopyFrom(convert.timestamp(record.value.preempt_deadline))
            event.preempt.reason = record.value.preempt_reason
        elif kind == workload_pb2.LEASE_EVENT_TYPE_RESIZED:
            event.resize.slices.extend(msg.slices)
        return event


async def _next_change(
    updates: asyncio.Queue[Versioned[LeaseRecord]], stopping: asyncio.Task[Literal[True]], keepalive_at: float
) -> Versioned[LeaseRecord] | None:
    """The lease's next version, or None when none came before the keepalive is due."""
    getter: asyncio.Future[Any] = asyncio.ensure_future(updates.get())
    try:
        step = max(0.0, keepalive_at - time.monotonic())
        done, _ = await asyncio.wait({getter, stopping}, timeout=step, return_when=asyncio.FIRST_COMPLETED)
    finally:
        getter.cancel()
    if stopping in done:
        raise Refusal(reasons.SHUTTING_DOWN, "vgpud is shutting down; resume with after_sequence")
    if getter in done and not getter.cancelled():
        got: Versioned[LeaseRecord] = getter.result()
        return got
    return None


def _unrealised(lease: LeaseRecord) -> bool:
    """A resume or growth whose MIG instances are not created yet: its event waits for the version that has them."""
    return lease.state is LeaseState.GRANTED and lease.waiting_for_mig


def event_kind(lease: LeaseRecord) -> int:
    """The event a new version of a lease is: RESUMED, RESIZED and WARNING are GRANTED versions marked by `event`."""
    if lease.state is LeaseState.GRANTED and lease.event == "resumed":
        return workload_pb2.LEASE_EVENT_TYPE_RESUMED
    if lease.state is LeaseState.GRANTED and lease.event == "resized":
        return workload_pb2.LEASE_EVENT_TYPE_RESIZED
    if lease.state is LeaseState.GRANTED and lease.event == "warning":
        return workload_pb2.LEASE_EVENT_TYPE_WARNING
    return _EVENT_FOR_STATE[lease.state]

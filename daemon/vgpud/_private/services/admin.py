"""AdminService: the whole pool for vgpuctl, served from this daemon's view of etcd."""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc
from vgpud._private.auth.access import sees_everything
from vgpud._private.auth.gate import caller
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import GpuRecord, LeaseState
from vgpud._private.core.projects import project_of
from vgpud._private.refusal import Refusal
from vgpud._private.services import audit_admin, convert, fair_admin, mig_plan, usage_admin, validation
from vgpud._private.services.serving import Serving
from vgpud._private.services.status import GuardedServicer, guarded_unary

Ctx = grpc.aio.ServicerContext[Any, Any]

_MAX_LAYOUT = 1 << 20
"""A layout file for thousands of GPUs fits in far less than 1 MiB."""


class AdminService(GuardedServicer, admin_pb2_grpc.AdminServiceServicer):
    """The admin door (see admin.proto)."""

    service_name: ClassVar[str] = "vgpu.api.v1.AdminService"

    def __init__(self, serving: Serving) -> None:
        self._s = serving

    @guarded_unary("ListNodes")
    async def ListNodes(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.ListNodesRequest, context: Ctx
    ) -> admin_pb2.ListNodesResponse:
        """Live nodes (READY or DRAINING), plus nodes with GPUs or settings in etcd but no live daemon (DOWN)."""
        view = self._s.view
        live = view.nodes()
        names = set(live) | {g.node for g in view.gpus().values()} | set(view.node_configs())
        return admin_pb2.ListNodesResponse(
            nodes=[
                convert.node(name, live.get(name), view.node_config(name).value, len(view.gpus_of(name)))
                for name in sorted(names)
            ]
        )

    @guarded_unary("ListGpus")
    async def ListGpus(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.ListGpusRequest, context: Ctx
    ) -> admin_pb2.ListGpusResponse:
        """Every GPU (or one node's) with its mode and allocation; a GPU whose node is down is not healthy."""
        node = validation.node_name(request.node) if request.node else ""
        view = self._s.view
        records = sorted(view.gpus().values(), key=lambda g: (g.node, g.index))
        return admin_pb2.ListGpusResponse(
            gpus=[
                convert.gpu(r, view.gpu_state(r.uuid).value, healthy=self._healthy(r))
                for r in records
                if not node or r.node == node
            ]
        )

    def _healthy(self, gpu: GpuRecord) -> bool:
        """This node's GPUs by the backend's health check; another node's by what its live daemon reports."""
        if gpu.node == self._s.node:
            return self._s.healthy(gpu.uuid)
        live = self._s.view.node(gpu.node)
        return live is not None and live.healthy(gpu.uuid)

    def _endpoints(self) -> dict[str, str]:
        """What clients on each live node dial, for VGPU_ENDPOINT in that node's lease environment."""
        return {name: record.endpoint for name, record in self._s.view.nodes().items()}

    @guarded_unary("ListAllLeases")
    async def ListAllLeases(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.ListAllLeasesRequest, context: Ctx
    ) -> admin_pb2.ListAllLeasesResponse:
        """Live leases of the pool; with include_ended also those still in history."""
        node = validation.node_name(request.node) if request.node else ""
        project = validation.node_name(request.project) if request.project else ""
        records: dict[str, LeaseRecord] = {v.value.id: v.value for v in self._s.view.live_leases()}
        if request.include_ended:
            snapshot = await self._s.store.get_prefix(self._s.keys.root + "leases/", timeout=self._s.rpc_timeout)
            for kv in snapshot.kvs:
                record = LeaseRecord.from_json(kv.value)
                records.setdefault(record.id, record)
        chosen = [
            r
            for r in records.values()
            if (not node or r.node == node or any(s.node == node for s in r.slices))
            and (not project or project_of(r) == project)  # 'default' finds leases that named no project
        ]
        chosen.sort(key=lambda r: r.created_at)
        endpoints = self._endpoints()
        who = caller()
        return admin_pb2.ListAllLeasesResponse(
            leases=[
                convert.lease(
                    r, node=self._s.node, endpoint=self._s.endpoint, endpoints=endpoints, mps_pipes=self._s.mps_pipes(r)
                )
                if sees_everything(who, r)
                else convert.redacted(convert.lease(r, node=self._s.node, endpoint=self._s.endpoint))
                for r in chosen
            ]
        )

    @guarded_unary("EvictLease")
    async def EvictLease(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.EvictLeaseRequest, context: Ctx
    ) -> admin_pb2.EvictLeaseResponse:
        """Revoke a lease now and free its capacity; a lease that already ended is refused (LEASE_ENDED)."""
        lease_id, _ = validation.lease_ref(request.lease_id, "-")
        reason = validation.bounded_text("reason", request.reason) or "evicted by an admin"
        allocator = self._s.allocator
        ended = await allocator.end(lease_id, LeaseState.REVOKED, reasons.END_EVICTED, reason, refuse_ended=True)
        return admin_pb2.EvictLeaseResponse(
            lease=convert.lease(
                ended,
                node=self._s.node,
                endpoint=self._s.endpoint,
                endpoints=self._endpoints(),
                mps_pipes=self._s.mps_pipes(ended),
            )
        )

    @guarded_unary("SetGpuMode")
    async def SetGpuMode(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.SetGpuModeRequest, context: Ctx
    ) -> admin_pb2.SetGpuModeResponse:
        """Switch a GPU between shared, MIG and exclusive; refused while leases are on it."""
        uuid = validation.gpu_uuid(request.gpu_uuid)
        mode = validation.gpu_mode(request.mode)
        state = await self._s.allocator.set_mode(uuid, mode)
        return admin_pb2.SetGpuModeResponse(gpu=convert.gpu(self._s.view.gpus()[uuid], state))

    @guarded_unary("PlanMigLayout")
    async def PlanMigLayout(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.PlanMigLayoutRequest, context: Ctx
    ) -> admin_pb2.PlanMigLayoutResponse:
        """What a declarative MIG layout would create and destroy against the pool now (a dry run)."""
        if len(request.layout_toml) > _MAX_LAYOUT:
            raise Refusal(
                reasons.INVALID_REQUEST, f"layout is {len(request.layout_toml)} bytes; the limit is {_MAX_LAYOUT}"
            )
        view = self._s.view
        gpus = [(r, view.gpu_state(r.uuid).value, self._healthy(r)) for r in view.gpus().values()]
        return mig_plan.plan_response(gpus, request.layout_toml)

    @guarded_unary("DrainNode")
    async def DrainNode(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.DrainNodeRequest, context: Ctx
    ) -> admin_pb2.DrainNodeResponse:
        """Stop (or restart) new work landing on a node."""
        name = validation.node_name(request.node)
        config = await self._s.allocator.set_draining(name, not request.undrain)
        view = self._s.view
        return admin_pb2.DrainNodeResponse(node=convert.node(name, view.node(name), config, len(view.gpus_of(name))))

    # -- fair sharing --------------------------------------------------------------------------------
    @guarded_unary("SetQuota")
    async def SetQuota(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.SetQuotaRequest, context: Ctx
    ) -> admin_pb2.SetQuotaResponse:
        """Create or change a project's quota."""
        return await fair_admin.set_quota(self._s, request)

    @guarded_unary("GetQuota")
    async def GetQuota(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.GetQuotaRequest, context: Ctx
    ) -> admin_pb2.GetQuotaResponse:
        """One project's quota and standing."""
        return await fair_admin.get_quota(self._s, request)

    @guarded_unary("ListQuotas")
    async def ListQuotas(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.ListQuotasRequest, context: Ctx
    ) -> admin_pb2.ListQuotasResponse:
        """Every project, the pool's capacity and the priority classes."""
        return fair_admin.list_quotas(self._s)

    @guarded_unary("DeleteQuota")
    async def DeleteQuota(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.DeleteQuotaRequest, context: Ctx
    ) -> admin_pb2.DeleteQuotaResponse:
        """Remove a project's quota."""
        return await fair_admin.delete_quota(self._s, request)

    @guarded_unary("ListQueue")
    async def ListQueue(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.ListQueueRequest, context: Ctx
    ) -> admin_pb2.ListQueueResponse:
        """The pool-wide queue in serving order."""
        return fair_admin.list_queue(self._s, request, self._s.allocator.clock())

    @guarded_unary("PreemptLease")
    async def PreemptLease(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.PreemptLeaseRequest, context: Ctx
    ) -> admin_pb2.PreemptLeaseResponse:
        """Ask a lease to checkpoint and yield."""
        return await fair_admin.preempt(self._s, request)

    @guarded_unary("ListLeaseUsage")
    async def ListLeaseUsage(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.ListLeaseUsageRequest, context: Ctx
    ) -> admin_pb2.ListLeaseUsageResponse:
        """Budget vs. use of every lease holding slices, from each node's latest sample."""
        return await usage_admin.list_lease_usage(self._s, request)

    @guarded_unary("ListAudit")
    async def ListAudit(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.ListAuditRequest, context: Ctx
    ) -> admin_pb2.ListAuditResponse:
        """Audit records of the whole pool (admin mutations and refusals), oldest first."""
        return await audit_admin.list_audit(self._s, request)

    @guarded_unary("GetUsageReport")
    async def GetUsageReport(  # noqa: N802 -- gRPC method name
        self, request: admin_pb2.GetUsageReportRequest, context: Ctx
    ) -> admin_pb2.GetUsageReportResponse:
        """Allocated vs. used GPU-hours per project over the asked window."""
        return await usage_admin.usage_report(self._s, request)

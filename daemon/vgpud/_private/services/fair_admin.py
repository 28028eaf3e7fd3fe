"""The fair-sharing half of AdminService: quotas (etcd key projects/<name>), the queue, preemption."""

from __future__ import annotations

import math
from collections import Counter

from google.protobuf import duration_pb2

from vgpu._private import reasons
from vgpu._private.units import MILLI_PER_GPU, format_memory
from vgpu.api.v1 import admin_pb2, types_pb2
from vgpud._private.auth.access import check_members, sees_everything
from vgpud._private.auth.gate import current_caller
from vgpud._private.core.fair_share import fair_shares
from vgpud._private.core.model import LeaseState
from vgpud._private.core.priorities import PriorityClass
from vgpud._private.core.projects import DEFAULT_PROJECT, HOLDING, Quota, Usage, project_of, usage_by_project
from vgpud._private.core.queue_order import asked
from vgpud._private.fair_pass import capacity_of, grant_rate, priority_of, queue_positions, waiting_entries
from vgpud._private.refusal import Refusal
from vgpud._private.services import convert, validation
from vgpud._private.services.serving import Serving
from vgpud._private.store.base import Delete, ModRevisionIs, Put

_MAX_MILLI = 10**9
"""A million GPUs: anything above is a unit mistake."""
_MAX_MEMORY = validation.MAX_SLICE_MEMORY * 2**16
"""1 EiB (65,536 GPUs of the largest slice, or a million GPUs of 1 TiB): anything above is a unit mistake."""
_WEIGHT_RANGE = (1e-3, 1e6)
"""Over-quota weights besides 0: a denormal or huge weight makes the fair-share divisions overflow."""
_SMALL_MEMORY_LIMIT = 1024**3
"""A memory limit below this is allowed but warned about: no GPU has so little."""
_MAX_GRACE_S = 3600
_MIN_GRACE_S = 1


def _quota_in(raw: types_pb2.Quota) -> Quota:
    name = validation.node_name(raw.project) if raw.project else ""
    if not name:
        raise Refusal(reasons.INVALID_REQUEST, "quota.project is required: the project's name")
    weight = raw.over_quota_weight or 0.0  # -0.0 is stored as 0
    low, high = _WEIGHT_RANGE
    if weight != 0 and not (math.isfinite(weight) and low <= weight <= high):
        raise Refusal(
            reasons.INVALID_REQUEST,
            f"over_quota_weight {weight!r} must be 0 (no share of idle capacity) or from {low:g} to {high:.0f} "
            "(1: an equal share)",
        )
    for field in ("deserved_milli", "limit_milli"):
        if getattr(raw, field) > _MAX_MILLI:
            raise Refusal(
                reasons.INVALID_REQUEST,
                f"{field} {getattr(raw, field)} is beyond any pool (at most {_MAX_MILLI}, a million GPUs); "
                "check the unit: 1000 milli-GPU is one GPU",
            )
    for field in ("deserved_memory_bytes", "limit_memory_bytes"):
        if getattr(raw, field) > _MAX_MEMORY:
            raise Refusal(
                reasons.INVALID_REQUEST,
                f"{field} {getattr(raw, field)} is beyond any pool (at most {_MAX_MEMORY} bytes, 1 EiB); "
                "check the unit: the value is in bytes",
            )
    if raw.limit_milli and raw.limit_milli < raw.deserved_milli:
        raise Refusal(
            reasons.INVALID_REQUEST,
            f"limit {raw.limit_milli} milli-GPU is below deserved {raw.deserved_milli}: raise the limit or set none",
        )
    if raw.limit_memory_bytes and raw.limit_memory_bytes < raw.deserved_memory_bytes:
        raise Refusal(reasons.INVALID_REQUEST, "limit_memory_bytes is below deserved_memory_bytes")
    return Quota(
        project=name,
        deserved_milli=raw.deserved_milli,
        deserved_memory_bytes=raw.deserved_memory_bytes,
        over_quota_weight=weight,
        limit_milli=raw.limit_milli,
        limit_memory_bytes=raw.limit_memory_bytes,
        members=check_members(raw.members),
    )


def _quota_out(q: Quota) -> types_pb2.Quota:
    return types_pb2.Quota(
        project=q.project,
        deserved_milli=q.deserved_milli,
        deserved_memory_bytes=q.deserved_memory_bytes,
        over_quota_weight=q.over_quota_weight,
        limit_milli=q.limit_milli,
        limit_memory_bytes=q.limit_memory_bytes,
        members=q.members,
    )


def _statuses(s: Serving) -> tuple[list[types_pb2.ProjectStatus], int, int]:
    """Every project with a quota or a live lease or a waiting request; the pool's capacity."""
    view = s.view
    quotas = view.quotas()
    leases = [v.value for v in view.live_leases()]
    waiting = waiting_entries(view, s.classes)
    names = set(quotas) | {project_of(lease) for lease in leases} | {w.project for w in waiting}
    used = usage_by_project(leases)
    count = Counter(project_of(lease) for lease in leases if lease.state in HOLDING)
    demand = {n: used.get(n, Usage()).milli for n in names}
    for w in waiting:
        demand[w.project] = demand.get(w.project, 0) + asked(w.request).milli
    capacity = capacity_of(view.gpus().values())
    full = {n: quotas.get(n) or Quota(n) for n in names}
    shares = fair_shares(full, demand, capacity.milli)
    out = []
    for name in sorted(names):
        quota = full[name]
        held = used.get(name, Usage())
        out.append(
            types_pb2.ProjectStatus(
                quota=_quota_out(quota),
                allocated_milli=held.milli,
                allocated_memory_bytes=held.memory_bytes,
                borrowed_milli=max(0, held.milli - quota.deserved_milli),
                fair_share_milli=shares.get(name, 0),
                leases=count.get(name, 0),
                waiting=sum(1 for w in waiting if w.project == name),
                configured=name in quotas,
            )
        )
    return out, capacity.milli, capacity.memory_bytes


def _warnings(quotas: dict[str, Quota], capacity_milli: int) -> list[str]:
    total = sum(q.deserved_milli for q in quotas.values())
    if total > capacity_milli:
        return [
            f"deserved quotas add up to {total / 1000:g} GPU, more than the pool's {capacity_milli / 1000:g} GPU: "
            "not every project can get its deserved share at once"
        ]
    return []


def _small_limit_warnings(q: Quota) -> list[str]:
    """What a limit below one GPU (or 1 GiB) shuts out: such a limit is allowed, but most likely a unit slip.

    A request that alone is above the limit is refused at once (OVER_QUOTA), never queued for ever; the
    admin hears here, when setting it, which requests that will be.
    """
    out = []
    if q.limit_milli and q.limit_milli < MILLI_PER_GPU:
        out.append(
            f"project {q.project}'s limit of {q.limit_milli / MILLI_PER_GPU:g} GPU is less than one GPU: whole-GPU "
            f"requests, and slices with a compute share above {q.limit_milli} milli-GPU, are refused at once "
            f"(OVER_QUOTA); if that is a unit slip, set it in GPUs: vgpuctl quota set {q.project} --limit 1gpu"
        )
    if q.limit_memory_bytes and q.limit_memory_bytes < _SMALL_MEMORY_LIMIT:
        out.append(
            f"project {q.project}'s memory limit of {format_memory(q.limit_memory_bytes)} is less than 1GiB: "
            "requests for more memory (and every whole GPU) are refused at once (OVER_QUOTA)"
        )
    return out


async def set_quota(s: Serving, request: admin_pb2.SetQuotaRequest) -> admin_pb2.SetQuotaResponse:
    """Create or replace a project's quota (guarded by the key's revision)."""
    quota = _quota_in(request.quota)
    key = s.keys.project(quota.project)
    current = s.view.quota(quota.project)
    put = Put(key, quota.to_json())
    txn = await s.store.txn([ModRevisionIs(key, current.revision if current else 0)], [put], timeout=s.rpc_timeout)
    if not txn.succeeded:
        raise Refusal(reasons.CONFLICT, f"project {quota.project}'s quota changed meanwhile; read it and retry")
    s.view.apply_committed([put], txn.revision, {key: quota})
    statuses, capacity, _ = _statuses(s)
    status = next(p for p in statuses if p.quota.project == quota.project)
    warnings = _small_limit_warnings(quota) + _warnings(s.view.quotas(), capacity)
    return admin_pb2.SetQuotaResponse(project=status, warnings=warnings)


async def get_quota(s: Serving, request: admin_pb2.GetQuotaRequest) -> admin_pb2.GetQuotaResponse:
    """One project's quota and standing."""
    name = validation.node_name(request.project)
    if s.view.quota(name) is None and name != DEFAULT_PROJECT:
        raise Refusal(reasons.PROJECT_NOT_FOUND, f"project {name!r} has no quota (vgpuctl quota set {name} ...)")
    statuses, _, _ = _statuses(s)
    found = next((p for p in statuses if p.quota.project == name), None)
    return admin_pb2.GetQuotaResponse(project=found or types_pb2.ProjectStatus(quota=_quota_out(Quota(name))))


def list_quotas(s: Serving) -> admin_pb2.ListQuotasResponse:
    """All projects, the pool's capacity, the priority classes."""
    statuses, milli, memory = _statuses(s)
    return admin_pb2.ListQuotasResponse(
        projects=statuses,
        capacity_milli=milli,
        capacity_memory_bytes=memory,
        priority_classes=[_class_out(s.classes.by_name[n]) for n in s.classes.names()],
        warnings=_warnings(s.view.quotas(), milli),
    )


def _class_out(c: PriorityClass) -> types_pb2.PriorityClass:
    return types_pb2.PriorityClass(
        name=c.name,
        value=c.value,
        preemptible=c.preemptible,
        in_quota_only=c.in_quota_only,
        preempt_grace=duration_pb2.Duration(seconds=int(c.preempt_grace_s)),
        min_runtime=duration_pb2.Duration(seconds=int(c.min_runtime_s)),
    )


async def delete_quota(s: Serving, request: admin_pb2.DeleteQuotaRequest) -> admin_pb2.DeleteQuotaResponse:
    """Remove a quota; refused while the project holds leases or waits."""
    name = validation.node_name(request.project)
    current = s.view.quota(name)
    if current is None:
        raise Refusal(reasons.PROJECT_NOT_FOUND, f"project {name!r} has no quota")
    busy = [v.value.id for v in s.view.live_leases() if project_of(v.value) == name]
    busy += [q.request.lease_id for q in s.view.queue() if project_of(q.request.lease) == name]
    if busy:
        raise Refusal(
            reasons.PROJECT_BUSY,
            f"project {name} still has {len(busy)} lease(s) or request(s) ({', '.join(busy[:3])}); end them first",
        )
    key = s.keys.project(name)
    delete = Delete(key)
    txn = await s.store.txn([ModRevisionIs(key, current.revision)], [delete], timeout=s.rpc_timeout)
    if not txn.succeeded:
        raise Refusal(reasons.CONFLICT, f"project {name}'s quota changed meanwhile; retry")
    s.view.apply_committed([delete], txn.revision)
    return admin_pb2.DeleteQuotaResponse()


def list_queue(s: Serving, request: admin_pb2.ListQueueRequest, now: float) -> admin_pb2.ListQueueResponse:
    """The queue in serving order, with estimated waits by Little's law (position / grant rate)."""
    project = validation.node_name(request.project) if request.project else ""
    rate = grant_rate([*(v.value for v in s.view.live_leases()), *(v.value for v in s.view.ended_leases())], now)
    out = admin_pb2.ListQueueResponse(grant_rate=rate)
    who = current_caller()
    for position, entry in enumerate(queue_positions(s.view, s.classes, now=now), start=1):
        if project and entry.project != project:
            continue
        queued = s.view.queued(entry.lease_id)
        live = s.view.lease(entry.lease_id)
        if queued is not None:
            lease = queued.request.lease
        elif live is not None:
            lease = live.value
        else:
            continue  # left the queue while listing
        msg = convert.lease(lease, node=s.node, endpoint=s.endpoint)  # queued: no slices, so no MPS variables
        item = out.entries.add(
            lease_id=entry.lease_id,
            project=entry.project,
            priority=lease.priority or s.classes.default,
            owner=msg.owner if sees_everything(who, lease) else None,
            request=msg.request,
            position=position,
            reason=_reason(s, entry.lease_id, position),
            suspended=entry.resume,
            node=lease.node,
        )
        item.waiting_since.CopyFrom(convert.timestamp(entry.since))
        if rate > 0:
            item.estimated_wait.CopyFrom(duration_pb2.Duration(seconds=math.ceil(position / rate)))
    return out


def _reason(s: Serving, lease_id: str, position: int) -> str:
    pos = s.queue.position(lease_id)
    if pos.reason:
        return pos.reason
    return f"{position - 1} request(s) ahead" if position > 1 else "waiting for capacity"


async def preempt(s: Serving, request: admin_pb2.PreemptLeaseRequest) -> admin_pb2.PreemptLeaseResponse:
    """Ask a lease to checkpoint and yield; refused for non-preemptible classes."""
    lease_id, _ = validation.lease_ref(request.lease_id, "x")
    current = await s.allocator.lookup(lease_id)
    if current is None:
        raise Refusal(reasons.LEASE_NOT_FOUND, f"no lease {lease_id!r}")
    lease = current.value
    if lease.state.ended:
        raise Refusal(reasons.LEASE_ENDED, f"lease {lease_id} has ended ({lease.end_reason})")
    cls = priority_of(s.classes, lease.priority)
    if not cls.preemptible:
        raise Refusal(
            reasons.NOT_PREEMPTIBLE,
            f"lease {lease_id} is of priority class {cls.name}, which is not preemptible; "
            "evict it instead (vgpuctl evict) if it must go",
        )
    if lease.state is LeaseState.PENDING:
        raise Refusal(reasons.NOT_PREEMPTING, f"lease {lease_id} is not granted yet")
    grace = cls.preempt_grace_s
    if request.HasField("grace"):
        grace = request.grace.seconds + request.grace.nanos / 1e9
        if not _MIN_GRACE_S <= grace <= _MAX_GRACE_S:
            raise Refusal(reasons.INVALID_REQUEST, f"grace {grace:g}s is outside {_MIN_GRACE_S}..{_MAX_GRACE_S}s")
    reason = validation.bounded_text("reason", request.reason) or "preempted by an admin"
    record = await s.transitions.preempt(lease_id, reason=reason, grace_s=grace)
    return admin_pb2.PreemptLeaseResponse(
        lease=convert.lease(record, node=s.node, endpoint=s.endpoint, mps_pipes=s.mps_pipes(record))
    )

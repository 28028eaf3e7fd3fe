"""The admin RPCs behind `vgpuctl top` and `vgpuctl report`: hourly usage buckets read back from etcd.

Each node writes its own buckets (usage_ledger.py); the answering daemon reads every node's, and its own
current bucket from memory (fresher than its last write).
"""

from __future__ import annotations

from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2
from vgpud._private.auth.access import sees_everything
from vgpud._private.auth.gate import current_caller
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.projects import project_of
from vgpud._private.core.usage_tally import HOUR_S, HourBucket, LeaseTally, ProjectTotals, hour_of, project_totals
from vgpud._private.refusal import Refusal
from vgpud._private.services import convert, validation
from vgpud._private.services.serving import Serving
from vgpud._private.usage_ledger import HOLDING

_GIB = 1024**3
_MIN_SINCE_S = 60.0


async def _buckets(s: Serving, first_hour: int) -> list[HourBucket]:
    """Every node's buckets from `first_hour` to now; this node's current bucket from memory.

    One range read per hour, so that each answer from etcd stays small however long the window is.
    """
    now_hour = hour_of(s.allocator.clock())
    buckets: list[HourBucket] = []
    for hour in range(first_hour, now_hour + HOUR_S, HOUR_S):
        snapshot = await s.store.get_range(
            s.keys.usage_hour(hour), s.keys.usage_hour(hour + HOUR_S), timeout=s.rpc_timeout
        )
        for kv in snapshot.kvs:
            try:
                buckets.append(HourBucket.from_json(kv.value))
            except ValueError:
                continue  # a record this version cannot read is left out of the sums, not fatal
    ledger = s.ledger
    if ledger is not None and ledger.bucket.hour >= first_hour:
        mine = ledger.bucket
        buckets = [b for b in buckets if not (b.node == mine.node and b.hour == mine.hour)]
        buckets.append(mine)
    return buckets


async def list_lease_usage(s: Serving, request: admin_pb2.ListLeaseUsageRequest) -> admin_pb2.ListLeaseUsageResponse:
    """One row per lease and node it holds slices on, with that node's latest sample of it."""
    project = validation.node_name(request.project) if request.project else ""
    now_hour = hour_of(s.allocator.clock())
    latest: dict[tuple[str, str], LeaseTally] = {}
    for bucket in sorted(await _buckets(s, now_hour - HOUR_S), key=lambda b: b.hour):
        for lease_id, tally in bucket.leases.items():
            latest[(lease_id, bucket.node)] = tally
    rows: list[admin_pb2.LeaseUsage] = []
    for versioned in sorted(s.view.live_leases(), key=lambda v: v.value.created_at):
        lease = versioned.value
        if lease.state not in HOLDING or (project and project_of(lease) != project):
            continue
        rows.extend(
            _row(lease, node, latest.get((lease.id, node))) for node in sorted({sl.node for sl in lease.slices})
        )
    return admin_pb2.ListLeaseUsageResponse(leases=rows)


def _row(lease: LeaseRecord, node: str, tally: LeaseTally | None) -> admin_pb2.LeaseUsage:
    local = [sl for sl in lease.slices if sl.node == node]
    row = admin_pb2.LeaseUsage(
        lease_id=lease.id,
        project=lease.project,
        user=lease.owner.user if sees_everything(current_caller(), lease) else "",
        node=node,
        state=convert.LEASE_STATE[lease.state],
        compute_milli=sum(sl.compute_milli for sl in local),
        memory_budget_bytes=sum(sl.memory_bytes for sl in local),
    )
    if lease.idle_since:
        row.idle_since.CopyFrom(convert.timestamp(lease.idle_since))
    if tally is None:
        return row
    row.sampled_at.CopyFrom(convert.timestamp(tally.last_at))
    row.processes = tally.processes
    if tally.memory_used_bytes is not None:
        row.memory_measured = True
        row.memory_used_bytes = tally.memory_used_bytes
    if tally.utilization_gpus is not None:
        row.utilization_measured = True
        row.used_milli = round(tally.utilization_gpus * 1000)
    return row


async def usage_report(s: Serving, request: admin_pb2.GetUsageReportRequest) -> admin_pb2.GetUsageReportResponse:
    """Per project: allocated and used GPU-hours, memory, idle leases, over the asked window."""
    project = validation.node_name(request.project) if request.project else ""
    since = request.since.seconds + request.since.nanos / 1e9 if request.HasField("since") else 24 * HOUR_S
    longest = s.usage_retention_days * 24 * HOUR_S
    if since < _MIN_SINCE_S:
        raise Refusal(reasons.INVALID_REQUEST, f"since must be at least {_MIN_SINCE_S:g}s, got {since:g}s")
    if since > longest:
        raise Refusal(
            reasons.INVALID_REQUEST,
            f"since {since / 86400:.3g}d is longer than the {s.usage_retention_days}-day retention "
            "([accounting] retention_days): ask for less",
        )
    now = s.allocator.clock()
    first_hour = hour_of(now - since)
    buckets = await _buckets(s, first_hour)
    totals = project_totals(buckets, idle_utilization=s.scheduling.idle_utilization, project=project)
    answer = admin_pb2.GetUsageReportResponse(
        projects=[_project(t) for _, t in sorted(totals.items())],
        nodes=len({b.node for b in buckets}),
    )
    answer.window_start.CopyFrom(convert.timestamp(first_hour))
    answer.window_end.CopyFrom(convert.timestamp(now))
    return answer


def _project(t: ProjectTotals) -> admin_pb2.ProjectUsage:
    return admin_pb2.ProjectUsage(
        project=t.project,
        leases=len(t.leases),
        allocated_gpu_hours=t.allocated_gpu_s / HOUR_S,
        used_gpu_hours=t.used_gpu_s / HOUR_S,
        measured_allocated_gpu_hours=t.allocated_measured_gpu_s / HOUR_S,
        lease_hours=t.held_s / HOUR_S,
        measured_lease_hours=t.measured_s / HOUR_S,
        memory_budget_gib_hours=t.budget_byte_s / _GIB / HOUR_S,
        memory_used_gib_hours=t.used_byte_s / _GIB / HOUR_S,
        idle_leases=t.idle_leases,
    )

"""`vgpuctl preempt`: ask one lease to checkpoint and yield its GPUs; it resumes later from the queue."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from google.protobuf.duration_pb2 import Duration

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.quantities import parse_duration
from vgpuctl._private.render import JsonFlag
from vgpuctl._private.transport import connect, target_of

LeaseId = Annotated[str, typer.Argument(metavar="LEASE_ID", help="The lease to preempt, as `vgpuctl leases` shows it.")]
Reason = Annotated[str, typer.Option("--reason", metavar="TEXT", help="Why, in words; shown to the lease's client.")]
Grace = Annotated[
    Duration | None,
    typer.Option(
        "--grace",
        metavar="DURATION",
        parser=parse_duration,
        help="Time to checkpoint, e.g. 30s, 2m or a bare number of seconds (default: its priority class's grace).",
        show_default=False,
    ),
]


def preempt(
    ctx: typer.Context, lease_id: LeaseId, reason: Reason = "", grace: Grace = None, as_json: JsonFlag = False
) -> None:
    """Ask a lease to checkpoint and yield; prints its new state and the deadline to do so by.

    The lease turns preempting; once its client has checkpointed it is suspended and waits in the queue to
    resume. A client that misses the deadline has its lease revoked (PREEMPT_DEADLINE_MISSED).

    Refused (NOT_PREEMPTIBLE) for a lease of a non-preemptible priority class: `vgpuctl evict` revokes at once.
    """
    request = admin_pb2.PreemptLeaseRequest(lease_id=lease_id, reason=reason)
    if grace is not None:
        request.grace.CopyFrom(grace)
    with connect(target_of(ctx)) as daemon:
        response: admin_pb2.PreemptLeaseResponse = daemon.call(daemon.admin.PreemptLease, request)
    if as_json:
        render.print_json(render.message_dict(response.lease))
    else:
        render.print_line(outcome(response.lease, lease_id, dt.datetime.now(dt.UTC)))


def outcome(lease: types_pb2.Lease, lease_id: str, now: dt.datetime) -> str:
    """'lease L: preempting; it must checkpoint and yield by 2025-03-01T12:00:33Z (in 30s)'."""
    line = f"lease {lease.id or lease_id}: {cells.lease_state(lease.state)}"
    if lease.state == types_pb2.LEASE_STATE_PREEMPTING and lease.HasField("preempt_deadline"):
        deadline = lease.preempt_deadline
        line += f"; it must checkpoint and yield by {cells.timestamp(deadline)} ({cells.until(deadline, now)})"
    elif lease.state == types_pb2.LEASE_STATE_SUSPENDED:
        line += "; it yielded and waits in the queue to resume (`vgpuctl queue`)"
    return line

"""`vgpuctl evict`: revoke one lease now; its client sees REVOKED with the reason (an ended lease is refused)."""

from __future__ import annotations

from typing import Annotated

import typer

from vgpu.api.v1 import admin_pb2
from vgpuctl._private import render
from vgpuctl._private.render import JsonFlag
from vgpuctl._private.transport import connect, target_of

LeaseId = Annotated[str, typer.Argument(metavar="LEASE_ID", help="The lease to revoke, as `vgpuctl leases` shows it.")]
Reason = Annotated[str, typer.Option("--reason", metavar="TEXT", help="Why, in words; shown to the lease's client.")]


def evict(ctx: typer.Context, lease_id: LeaseId, reason: Reason = "", as_json: JsonFlag = False) -> None:
    """Revoke a lease now: its slices are freed and its client is told why.

    A lease that has already ended is refused (LEASE_ENDED, exit 1), naming how it ended.
    """
    request = admin_pb2.EvictLeaseRequest(lease_id=lease_id, reason=reason)
    with connect(target_of(ctx)) as daemon:
        response: admin_pb2.EvictLeaseResponse = daemon.call(daemon.admin.EvictLease, request)
    if as_json:
        render.print_json(render.message_dict(response.lease))
    else:
        render.print_line(f"evicted {response.lease.id or lease_id}")

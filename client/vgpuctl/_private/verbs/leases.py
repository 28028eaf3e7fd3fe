"""`vgpuctl leases`: who holds which slices of the pool, across every node."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.render import Column, JsonFlag
from vgpuctl._private.transport import connect, target_of

NodeFilter = Annotated[
    str | None, typer.Option("--node", metavar="NODE", help="Only leases granted on, or holding slices on, this node.")
]
ProjectFilter = Annotated[str | None, typer.Option("--project", metavar="PROJECT", help="Only this project's leases.")]
AllFlag = Annotated[
    bool, typer.Option("--all", help="Also list ended leases still kept in history, with their END REASON.")
]

COLUMNS = (
    Column("ID"),
    Column("STATE"),
    Column("PROJECT"),
    Column("OWNER", elastic=True),
    Column("SLICES", elastic=True),
    Column("AGE", justify_right=True),
    Column("NODES"),
)
END_REASON = Column("END REASON", elastic=True)


def leases(
    ctx: typer.Context,
    node: NodeFilter = None,
    project: ProjectFilter = None,
    include_ended: AllFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """List live leases (with --all also ended ones): ID, STATE, PROJECT, OWNER, SLICES, AGE, NODES.

    NODES: where the slices are (the granting node while there are none); --json also has the granting `node`.
    """
    request = admin_pb2.ListAllLeasesRequest(node=node or "", project=project or "", include_ended=include_ended)
    with connect(target_of(ctx)) as daemon:
        response: admin_pb2.ListAllLeasesResponse = daemon.call(daemon.admin.ListAllLeases, request)
    listed = sorted(response.leases, key=lambda lease: (lease.created_at.ToNanoseconds(), lease.id))
    if as_json:
        render.print_messages(listed)
    elif not listed:
        render.print_empty("leases")
    else:
        now = dt.datetime.now(dt.UTC)
        columns = (*COLUMNS, END_REASON) if include_ended else COLUMNS
        render.print_table(columns, [row(lease, now, with_end=include_ended) for lease in listed])


def row(lease: types_pb2.Lease, now: dt.datetime, *, with_end: bool) -> list[str]:
    """One table row; END REASON only for --all, '-' while the lease is live."""
    cells_of_row = [
        lease.id,
        cells.lease_state(lease.state),
        cells.project(lease.project),
        cells.owner(lease.owner),
        cells.slices(lease),
        cells.age(lease.created_at, now),
        cells.lease_nodes(lease),
    ]
    if with_end:
        cells_of_row.append(lease.end_reason or cells.NONE)
    return cells_of_row

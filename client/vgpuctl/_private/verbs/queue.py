"""`vgpuctl queue`: the pool-wide queue of waiting requests, in the order the leader will serve them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.render import Column, JsonFlag
from vgpuctl._private.transport import connect, target_of

ProjectFilter = Annotated[
    str | None, typer.Option("--project", metavar="PROJECT", help="Only this project's requests.")
]

COLUMNS = (
    Column("POS", justify_right=True),
    Column("LEASE"),
    Column("PROJECT"),
    Column("PRIORITY"),
    Column("STATE"),
    Column("SHAPE", elastic=True),
    Column("WAITING", justify_right=True),
    Column("EST. WAIT", justify_right=True),
    Column("WHY", elastic=True),
)
PENDING = "pending"
SUSPENDED = "suspended"


def queue(ctx: typer.Context, project: ProjectFilter = None, as_json: JsonFlag = False) -> None:
    """List the waiting requests in serving order: POS, LEASE, PROJECT, PRIORITY, STATE, SHAPE, WAITING, EST. WAIT, WHY.

    STATE: pending (a new request) or suspended (a preempted lease waiting to resume). WAITING: for how long.
    EST. WAIT: estimated from the recent grant rate, printed below the table ('-': no estimate yet).
    WHY: what it waits for. --json also has the owner and the node that holds the client's request.
    """
    request = admin_pb2.ListQueueRequest(project=project or "")
    with connect(target_of(ctx)) as daemon:
        response: admin_pb2.ListQueueResponse = daemon.call(daemon.admin.ListQueue, request)
    if as_json:
        render.print_json(render.message_dict(response))
    elif not response.entries:
        render.print_empty("waiting requests")
    else:
        now = dt.datetime.now(dt.UTC)
        entries = sorted(response.entries, key=lambda entry: entry.position)  # stable: ties keep the daemon's order
        render.print_table(COLUMNS, [row(entry, now) for entry in entries])
        render.print_line("")
        render.print_line(rate_line(response.grant_rate))


def row(entry: types_pb2.QueueEntry, now: dt.datetime) -> list[str]:
    """One waiting request."""
    shape = cells.shape(entry.request) if entry.HasField("request") else cells.NONE
    if entry.request.gang and entry.request.count > 1:
        shape += " gang"
    return [
        str(entry.position),
        entry.lease_id or cells.NONE,
        cells.project(entry.project),
        entry.priority or cells.NONE,
        SUSPENDED if entry.suspended else PENDING,
        shape,
        cells.age(entry.waiting_since, now),
        f"~{cells.duration(entry.estimated_wait)}" if entry.HasField("estimated_wait") else cells.NONE,
        entry.reason or cells.NONE,
    ]


def rate_line(rate: float) -> str:
    """'grant rate: 0.5/s (30/min), what the estimated waits derive from', or why there are no estimates."""
    if rate <= 0:
        return "grant rate: 0/s (nothing granted lately, so waits cannot be estimated)"
    return f"grant rate: {rate:.3g}/s ({rate * 60:.3g}/min), what the estimated waits derive from"

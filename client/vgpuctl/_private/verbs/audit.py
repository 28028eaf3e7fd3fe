"""`vgpuctl audit`: who changed what in the pool, and which calls were refused (admins only)."""

from __future__ import annotations

from typing import Annotated

import typer
from google.protobuf.duration_pb2 import Duration

from vgpu.api.v1 import admin_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.quantities import parse_duration
from vgpuctl._private.render import Column, JsonFlag
from vgpuctl._private.transport import connect, target_of

Since = Annotated[
    Duration | None,
    typer.Option(
        "--since",
        metavar="DURATION",
        parser=parse_duration,
        help="How far back, e.g. 30m, 1h, 7d (default 1h; at most the daemon's [audit] retention_days).",
        show_default=False,
    ),
]
IdentityFilter = Annotated[
    str | None,
    typer.Option(
        "--identity",
        metavar="WHO",
        help="Only records of this caller: a user name, uid:N or a spiffe:// id.",
        show_default=False,
    ),
]
Limit = Annotated[
    int,
    typer.Option("--limit", metavar="N", min=1, max=10_000, help="At most N records, the newest (default 1000)."),
]

COLUMNS = (
    Column("TIME"),
    Column("NODE"),
    Column("WHO"),
    Column("ROLE"),
    Column("METHOD"),
    Column("TARGET"),
    Column("OUTCOME"),
    Column("REASON / CHANGE", elastic=True),
)


def audit(
    ctx: typer.Context,
    since: Since = None,
    identity: IdentityFilter = None,
    limit: Limit = 1000,
    as_json: JsonFlag = False,
) -> None:
    """Audit records of the whole pool, oldest first: TIME, NODE, WHO, ROLE, METHOD, TARGET, OUTCOME, REASON / CHANGE.

    Every admin mutation (allowed or refused) and every call refused for identity or permission leaves one;
    repeated refusals of the same caller, method and reason within 10 s are folded into one record ("xN").
    """
    request = admin_pb2.ListAuditRequest(identity=identity or "", limit=limit)
    if since is not None:
        request.since.CopyFrom(since)
    with connect(target_of(ctx)) as daemon:
        response: admin_pb2.ListAuditResponse = daemon.call(daemon.admin.ListAudit, request)
    if as_json:
        render.print_json(render.message_dict(response))
        return
    if not response.records:
        render.print_empty("audit records")
        return
    render.print_table(COLUMNS, [row(r) for r in response.records])
    if response.truncated:
        render.print_line(f"(only the newest {limit} shown: narrow --since or --identity, or raise --limit)")


def row(r: admin_pb2.AuditRecord) -> list[str]:
    """One record."""
    who = r.user or cells.NONE
    if r.identity and r.identity != who:
        who = f"{who} ({r.identity})"
    detail = f"{r.reason}: {r.message}" if r.reason else r.message
    if r.repeats:
        detail = f"x{r.repeats} {detail}"
    return [
        cells.timestamp(r.time),
        r.node,
        who,
        r.role or cells.NONE,
        r.method,
        r.target or cells.NONE,
        r.outcome,
        detail or cells.NONE,
    ]

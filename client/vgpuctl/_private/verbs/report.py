"""`vgpuctl report`: allocated vs. used GPU-hours per project over a past window, and its idle leases."""

from __future__ import annotations

from typing import Annotated

import typer
from google.protobuf.duration_pb2 import Duration

from vgpu.api.v1 import admin_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.quantities import parse_duration
from vgpuctl._private.render import Column, JsonFlag
from vgpuctl._private.transport import connect, target_of

ProjectFilter = Annotated[str | None, typer.Option("--project", metavar="PROJECT", help="Only this project.")]
Since = Annotated[
    Duration | None,
    typer.Option(
        "--since",
        metavar="DURATION",
        parser=parse_duration,
        help="How far back, e.g. 24h, 7d (default 24h; whole hours: the current hour counts so far).",
        show_default=False,
    ),
]

COLUMNS = (
    Column("PROJECT"),
    Column("LEASES", justify_right=True),
    Column("ALLOCATED GPU-H", justify_right=True),
    Column("USED GPU-H", justify_right=True),
    Column("USE%", justify_right=True),
    Column("MEASURED", justify_right=True),
    Column("MEM USED/BUDGET GIB-H", justify_right=True),
    Column("IDLE LEASES", elastic=True),
)
_SHOWN_IDLE = 3
"""Idle lease ids listed in the table per project (all of them are in --json)."""


def report(ctx: typer.Context, since: Since = None, project: ProjectFilter = None, as_json: JsonFlag = False) -> None:
    """Per project: PROJECT, LEASES, ALLOCATED GPU-H, USED GPU-H, USE%, MEASURED, MEM USED/BUDGET GIB-H, IDLE LEASES.

    USE%: used over allocated GPU-hours during the measured time. MEASURED: the share of lease-hours whose use
    was measured (by NVML or the SDK runtime). IDLE LEASES: measured for at least half their time and used
    under the idle threshold (scheduling.idle_utilization in the daemon config) of what they held.
    """
    request = admin_pb2.GetUsageReportRequest(project=project or "")
    if since is not None:
        request.since.CopyFrom(since)
    with connect(target_of(ctx)) as daemon:
        response: admin_pb2.GetUsageReportResponse = daemon.call(daemon.admin.GetUsageReport, request)
    if as_json:
        render.print_json(render.message_dict(response))
        return
    window = f"from {cells.timestamp(response.window_start)} to {cells.timestamp(response.window_end)}"
    if not response.projects:
        render.print_empty(f"usage {window}")
        return
    render.print_table(COLUMNS, [row(p) for p in response.projects])
    render.print_line("")
    render.print_line(f"{window}, {response.nodes} node(s) reporting; GPU-H: one whole GPU for one hour")


def row(p: admin_pb2.ProjectUsage) -> list[str]:
    """One project."""
    use = cells.NONE
    if p.measured_allocated_gpu_hours > 0:
        use = f"{100 * p.used_gpu_hours / p.measured_allocated_gpu_hours:.0f}%"
    measured = f"{100 * p.measured_lease_hours / p.lease_hours:.0f}%" if p.lease_hours > 0 else cells.NONE
    idle = ", ".join(p.idle_leases[:_SHOWN_IDLE])
    if len(p.idle_leases) > _SHOWN_IDLE:
        idle += f" (+{len(p.idle_leases) - _SHOWN_IDLE} more)"
    return [
        cells.project(p.project),
        str(p.leases),
        f"{p.allocated_gpu_hours:.2f}",
        f"{p.used_gpu_hours:.2f}" if p.measured_lease_hours > 0 else cells.NONE,
        use,
        measured,
        f"{p.memory_used_gib_hours:.1f}/{p.memory_budget_gib_hours:.1f}",
        f"{len(p.idle_leases)}: {idle}" if p.idle_leases else "0",
    ]

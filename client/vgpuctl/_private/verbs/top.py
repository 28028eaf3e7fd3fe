"""`vgpuctl top`: budget vs. real use of every lease holding slices, and per project; `--watch` refreshes."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import typer
from google.protobuf.duration_pb2 import Duration

from vgpu.api.v1 import admin_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.quantities import parse_duration
from vgpuctl._private.render import Column, JsonFlag
from vgpuctl._private.transport import connect, target_of

ProjectFilter = Annotated[str | None, typer.Option("--project", metavar="PROJECT", help="Only this project's leases.")]
Watch = Annotated[bool, typer.Option("--watch", "-w", help="Refresh every --interval until Ctrl-C.")]
Interval = Annotated[
    Duration | None,
    typer.Option(
        "--interval",
        metavar="DURATION",
        parser=parse_duration,
        help="Time between refreshes with --watch, e.g. 2s (default 2s, at least 0.5s).",
        show_default=False,
    ),
]

LEASE_COLUMNS = (
    Column("LEASE"),
    Column("PROJECT"),
    Column("USER"),
    Column("NODE"),
    Column("MEMORY USED/BUDGET", justify_right=True),
    Column("MEM%", justify_right=True),
    Column("COMPUTE USED/SHARE", justify_right=True),
    Column("USE%", justify_right=True),
    Column("PROCS", justify_right=True),
    Column("IDLE", justify_right=True),
    Column("SAMPLED", justify_right=True),
)
PROJECT_COLUMNS = (
    Column("PROJECT"),
    Column("LEASES", justify_right=True),
    Column("MEMORY USED/BUDGET", justify_right=True),
    Column("COMPUTE USED/SHARE", justify_right=True),
    Column("USE%", justify_right=True),
    Column("IDLE LEASES", justify_right=True),
)
_MIN_INTERVAL_S = 0.5
_DEFAULT_INTERVAL_S = 2.0
pause = time.sleep
"""How --watch waits between refreshes (a name of its own, so a test can stand in for it)."""


def top(
    ctx: typer.Context,
    project: ProjectFilter = None,
    watch: Watch = False,
    interval: Interval = None,
    as_json: JsonFlag = False,
) -> None:
    """Show budget vs. use per lease and per project: memory used/budget, compute used/share, idle time.

    Use comes from the node watchdog (NVML, or the SDK runtime's reports); '-' means nothing measured it.
    SAMPLED: how long ago the lease's node last sampled it (nodes write every accounting.flush_interval_s).
    IDLE: how long the lease has been flagged idle (use under the idle threshold).
    """
    seconds = _DEFAULT_INTERVAL_S if interval is None else interval.ToTimedelta().total_seconds()
    if seconds < _MIN_INTERVAL_S:
        raise typer.BadParameter(f"--interval must be at least {_MIN_INTERVAL_S}s, got {seconds:g}s")
    if watch and as_json:
        raise typer.BadParameter("--watch and --json do not go together: --json prints once, for scripts")
    request = admin_pb2.ListLeaseUsageRequest(project=project or "")
    with connect(target_of(ctx)) as daemon:
        while True:
            response: admin_pb2.ListLeaseUsageResponse = daemon.call(daemon.admin.ListLeaseUsage, request)
            if as_json:
                render.print_messages(response.leases)
                return
            if watch and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")  # home + clear: redraw in place, like top
            show(response.leases, dt.datetime.now(dt.UTC))
            if not watch:
                return
            sys.stdout.flush()
            try:
                pause(seconds)
            except KeyboardInterrupt:
                return


def show(leases: Sequence[admin_pb2.LeaseUsage], now: dt.datetime) -> None:
    """The lease table, then the project table."""
    if not leases:
        render.print_empty("leases holding slices")
        return
    render.print_table(LEASE_COLUMNS, [lease_row(u, now) for u in leases])
    render.print_line("")
    render.print_table(PROJECT_COLUMNS, [t.row() for t in project_rows(leases)])


def lease_row(u: admin_pb2.LeaseUsage, now: dt.datetime) -> list[str]:
    """One lease on one node."""
    used = u.memory_used_bytes if u.memory_measured else None
    busy = u.used_milli if u.utilization_measured else None
    return [
        u.lease_id,
        cells.project(u.project),
        u.user or cells.NONE,
        u.node,
        f"{_memory(used)}/{cells.memory(u.memory_budget_bytes)}",
        _percent(used, u.memory_budget_bytes),
        f"{_gpus(busy)}/{_gpus(u.compute_milli)}",
        _percent(busy, u.compute_milli),
        str(u.processes) if u.HasField("sampled_at") else cells.NONE,
        cells.age(u.idle_since, now),
        cells.age(u.sampled_at, now),
    ]


@dataclass(slots=True)
class ProjectRow:
    """One project's sums over its leases (only measured leases count towards the used columns)."""

    project: str
    lease_ids: set[str] = field(default_factory=set)
    budget_bytes: int = 0
    used_bytes: int | None = None
    share_milli: int = 0
    used_milli: int | None = None
    measured_share_milli: int = 0
    idle: int = 0

    def row(self) -> list[str]:
        """The table cells."""
        return [
            cells.project(self.project),
            str(len(self.lease_ids)),
            f"{_memory(self.used_bytes)}/{cells.memory(self.budget_bytes)}",
            f"{_gpus(self.used_milli)}/{_gpus(self.share_milli)}",
            _percent(self.used_milli, self.measured_share_milli),
            str(self.idle),
        ]


def project_rows(leases: Sequence[admin_pb2.LeaseUsage]) -> list[ProjectRow]:
    """Per project, sorted by name: budgets and shares of every lease, use of the measured ones."""
    rows: dict[str, ProjectRow] = {}
    for u in leases:
        name = cells.project(u.project)  # '' and 'default' are one project
        row = rows.setdefault(name, ProjectRow(name))
        if u.lease_id not in row.lease_ids:  # a lease on several nodes has a row per node: count it once
            row.lease_ids.add(u.lease_id)
            row.idle += 1 if u.HasField("idle_since") else 0
        row.budget_bytes += u.memory_budget_bytes
        row.share_milli += u.compute_milli
        if u.memory_measured:
            row.used_bytes = (row.used_bytes or 0) + u.memory_used_bytes
        if u.utilization_measured:
            row.used_milli = (row.used_milli or 0) + u.used_milli
            row.measured_share_milli += u.compute_milli
    return [rows[name] for name in sorted(rows)]


def _memory(size: int | None) -> str:
    return cells.NONE if size is None else cells.memory(size)


def _gpus(milli: int | None) -> str:
    """Milli-GPU as a GPU count to two decimals ('0.50'), '-' when unmeasured."""
    return cells.NONE if milli is None else f"{milli / 1000:.2f}"


def _percent(used: int | None, of: int) -> str:
    if used is None or of <= 0:
        return cells.NONE
    return f"{100 * used / of:.0f}%"

"""`vgpuctl quota list`: every project's quota and use, the pool's capacity, and the priority classes."""

from __future__ import annotations

from collections.abc import Sequence

import typer

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.render import Column, JsonFlag
from vgpuctl._private.transport import connect, target_of

COLUMNS = (
    Column("PROJECT"),
    Column("DESERVED", justify_right=True),
    Column("ALLOCATED", justify_right=True),
    Column("BORROWED", justify_right=True),
    Column("FAIR SHARE", justify_right=True),
    Column("LIMIT", justify_right=True),
    Column("WEIGHT", justify_right=True),
    Column("LEASES", justify_right=True),
    Column("WAITING", justify_right=True),
)
CLASS_COLUMNS = (
    Column("PRIORITY CLASS"),
    Column("VALUE", justify_right=True),
    Column("PREEMPTIBLE"),
    Column("IN QUOTA ONLY"),
    Column("GRACE", justify_right=True),
    Column("MIN RUNTIME", justify_right=True),
)
NO_QUOTA_NOTE = f"{cells.NONE}: no quota set; the project only borrows idle GPUs"


def list_quotas(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the projects (with a quota or a live lease); then the pool's capacity and the priority classes.

    DESERVED is guaranteed; BORROWED is held beyond it (reclaimable); FAIR SHARE is deserved plus the
    project's weighted part of what the others leave idle; LIMIT caps what it may hold; WEIGHT is its
    over-quota weight; WAITING counts its queued requests, suspended leases included.

    Deserved quotas that add up past the pool are allowed; the daemon's warnings go to stderr.
    """
    with connect(target_of(ctx)) as daemon:
        response: admin_pb2.ListQuotasResponse = daemon.call(daemon.admin.ListQuotas, admin_pb2.ListQuotasRequest())
    projects = sorted(response.projects, key=lambda status: status.quota.project)
    if as_json:
        render.print_json(render.message_dict(response))
    else:
        if projects:
            render.print_table(COLUMNS, [row(status) for status in projects])
            if any(not status.configured for status in projects):
                render.print_line(NO_QUOTA_NOTE)
            render.print_line("")
        else:
            render.print_empty("projects")
        render.print_line(pool_line(response, projects))
        classes = sorted(response.priority_classes, key=lambda cls: (-cls.value, cls.name))
        if classes:
            render.print_line("")
            render.print_table(CLASS_COLUMNS, [class_row(cls) for cls in classes])
    render.print_warnings(response.warnings)


def row(status: types_pb2.ProjectStatus) -> list[str]:
    """One project's row; the quota cells read '-' for a project without a quota."""
    quota = status.quota
    configured = status.configured
    return [
        cells.project(quota.project),
        cells.capacity(quota.deserved_milli, quota.deserved_memory_bytes) if configured else cells.NONE,
        cells.capacity(status.allocated_milli, status.allocated_memory_bytes),
        cells.gpus(status.borrowed_milli),
        cells.gpus(status.fair_share_milli),
        cells.limit(quota.limit_milli, quota.limit_memory_bytes) if configured else cells.NONE,
        cells.weight(quota.over_quota_weight) if configured else cells.NONE,
        str(status.leases),
        str(status.waiting),
    ]


def pool_line(response: admin_pb2.ListQuotasResponse, projects: Sequence[types_pb2.ProjectStatus]) -> str:
    """'pool capacity: 8 GPU, 640GiB; deserved quotas add up to 6 GPU (75% of the pool)'."""
    capacity = cells.capacity(response.capacity_milli, response.capacity_memory_bytes)
    deserved = sum(status.quota.deserved_milli for status in projects if status.configured)
    share = f" ({deserved * 100 / response.capacity_milli:.0f}% of the pool)" if response.capacity_milli else ""
    return f"pool capacity: {capacity}; deserved quotas add up to {cells.gpus(deserved)}{share}"


def class_row(cls: types_pb2.PriorityClass) -> list[str]:
    """One priority class's row; an unset grace or minimum runtime reads '-'."""
    return [
        cls.name or cells.NONE,
        str(cls.value),
        cells.yes_no(cls.preemptible),
        cells.yes_no(cls.in_quota_only),
        cells.duration(cls.preempt_grace) if cls.HasField("preempt_grace") else cells.NONE,
        cells.duration(cls.min_runtime) if cls.HasField("min_runtime") else cells.NONE,
    ]

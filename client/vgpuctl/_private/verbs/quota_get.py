"""`vgpuctl quota get`: one project's quota and where it stands now (allocated, borrowed, fair share)."""

from __future__ import annotations

import typer

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.render import JsonFlag
from vgpuctl._private.transport import connect, target_of
from vgpuctl._private.verbs.quota_set import ProjectName, check_project


def get(ctx: typer.Context, project: ProjectName, as_json: JsonFlag = False) -> None:
    """Show PROJECT's quota (deserved, limit, over-quota weight) and what it holds and waits for now.

    BORROWED: held beyond deserved, which other projects may reclaim. FAIR SHARE: deserved plus its weighted
    part of what the other projects leave idle. --json has every value in milli-GPU and bytes.
    """
    name = check_project(project)
    with connect(target_of(ctx)) as daemon:
        request = admin_pb2.GetQuotaRequest(project=name)
        response: admin_pb2.GetQuotaResponse = daemon.call(daemon.admin.GetQuota, request)
    if as_json:
        render.print_json(render.message_dict(response.project))
    else:
        render.print_fields(fields(response.project, name))


def fields(status: types_pb2.ProjectStatus, name: str) -> list[tuple[str, str]]:
    """The key/value lines of one project."""
    quota = status.quota
    pairs = [("project", quota.project or name)]
    if status.configured:
        pairs += [
            ("deserved", cells.capacity(quota.deserved_milli, quota.deserved_memory_bytes)),
            ("limit", cells.limit(quota.limit_milli, quota.limit_memory_bytes)),
            ("over-quota weight", cells.weight(quota.over_quota_weight)),
            ("members", ", ".join(quota.members) if quota.members else "none: only admins may acquire in it"),
        ]
    else:
        hint = f"`vgpuctl quota set {quota.project or name} --deserved N` sets one"
        pairs.append(("quota", f"none set: it only borrows idle GPUs ({hint})"))
    pairs += [
        ("allocated", cells.capacity(status.allocated_milli, status.allocated_memory_bytes)),
        ("borrowed", cells.gpus(status.borrowed_milli)),
        ("fair share", cells.gpus(status.fair_share_milli)),
        ("leases", str(status.leases)),
        ("waiting", str(status.waiting)),
    ]
    return pairs

"""`vgpuctl quota delete`: remove a project's quota; the daemon refuses (PROJECT_BUSY) while it holds leases."""

from __future__ import annotations

import typer

from vgpu.api.v1 import admin_pb2
from vgpuctl._private import render
from vgpuctl._private.transport import connect, target_of
from vgpuctl._private.verbs.quota_set import ProjectName, check_project


def delete(ctx: typer.Context, project: ProjectName) -> None:
    """Remove PROJECT's quota; refused while it holds leases or has requests in the queue.

    Without a quota the project has no guaranteed share: at most it borrows idle GPUs.
    """
    name = check_project(project)
    with connect(target_of(ctx)) as daemon:
        daemon.call(daemon.admin.DeleteQuota, admin_pb2.DeleteQuotaRequest(project=name))
    render.print_line(f"quota of project {name} deleted")

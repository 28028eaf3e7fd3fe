"""`vgpuctl quota set`: create a project's quota, or change part of it (the flags not given are kept).

The current quota is read first (GetQuota): a project without one (NOT_FOUND) starts from deserved 0,
over-quota weight 1 and no limits. Every value is checked here, before the daemon is asked to change
anything, so a typo costs one usage line (exit 2) and no write.
"""

from __future__ import annotations

from typing import Annotated

import typer

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import cells, exit_codes, render
from vgpuctl._private.errors import CliError
from vgpuctl._private.quantities import parse_gpu_limit, parse_gpus, parse_memory_amount, parse_weight
from vgpuctl._private.render import JsonFlag
from vgpuctl._private.transport import Daemon, connect, target_of

DEFAULT_WEIGHT = 1.0
"""The over-quota weight of a new project when --over-quota-weight is not given."""

ProjectName = Annotated[str, typer.Argument(metavar="PROJECT", help="The project, as its leases name it.")]
Deserved = Annotated[
    int | None,
    typer.Option(
        "--deserved",
        metavar="GPUS",
        parser=parse_gpus,
        help="Guaranteed GPU capacity: 4gpu, 0.5gpu, 2500m (milli-GPU) or a bare number of GPUs.",
        show_default=False,
    ),
]
DeservedMemory = Annotated[
    int | None,
    typer.Option(
        "--deserved-memory",
        metavar="SIZE",
        parser=parse_memory_amount,
        help="Guaranteed GPU memory, e.g. 320GiB; 0 or none: not bounded by memory.",
        show_default=False,
    ),
]
Weight = Annotated[
    float | None,
    typer.Option(
        "--over-quota-weight",
        metavar="W",
        parser=parse_weight,
        help="Its share of idle GPUs beyond deserved, relative to other projects' weights (0.001 to 1000000).",
        show_default=False,
    ),
]
Limit = Annotated[
    int | None,
    typer.Option(
        "--limit",
        metavar="GPUS",
        parser=parse_gpu_limit,
        help="Most GPU capacity it may hold, borrowing included (at least --deserved); none or 0: no limit.",
        show_default=False,
    ),
]
LimitMemory = Annotated[
    int | None,
    typer.Option(
        "--limit-memory",
        metavar="SIZE",
        parser=parse_memory_amount,
        help="Most GPU memory it may hold, e.g. 640GiB (at least --deserved-memory); none or 0: no limit.",
        show_default=False,
    ),
]
Members = Annotated[
    str | None,
    typer.Option(
        "--members",
        metavar="LIST",
        parser=lambda text: text,
        help="Who may acquire in it, replacing the list: user:NAME,group:NAME,... ('' clears: admins only).",
        show_default=False,
    ),
]
_MEMBER_KINDS = ("user:", "group:")


def parse_members(text: str) -> list[str]:
    """`user:alice,group:ml` as a list; a usage error names an entry that is neither user: nor group:."""
    members = [part.strip() for part in text.split(",") if part.strip()]
    for member in members:
        if not member.startswith(_MEMBER_KINDS) or member in _MEMBER_KINDS:
            raise CliError(exit_codes.USAGE, f"--members entry {member!r} is not user:NAME or group:NAME")
    return members


def set_quota(
    ctx: typer.Context,
    project: ProjectName,
    *,
    deserved: Deserved = None,
    over_quota_weight: Weight = None,
    limit: Limit = None,
    deserved_memory: DeservedMemory = None,
    limit_memory: LimitMemory = None,
    members: Members = None,
    as_json: JsonFlag = False,
) -> None:
    """Create PROJECT's quota or change it: on an existing quota only the flags given change, the rest is kept.

    A new project starts at deserved 0, over-quota weight 1, no limits, no members (only admins may use
    it until --members names who may); then it only borrows idle GPUs.

    Deserved quotas may add up past the pool: that is allowed, and printed as a warning.
    """
    name = check_project(project)
    member_list = parse_members(members) if members is not None else None
    # Both ends of a pair given: a limit below its deserved is caught before anything is asked of the daemon.
    check_limits(
        types_pb2.Quota(
            deserved_milli=deserved or 0,
            deserved_memory_bytes=deserved_memory or 0,
            limit_milli=limit or 0,
            limit_memory_bytes=limit_memory or 0,
        ),
        kept=set(),
    )
    with connect(target_of(ctx)) as daemon:
        current = current_quota(daemon, name)
        quota = types_pb2.Quota()
        if current is None:
            quota.project = name
            quota.over_quota_weight = DEFAULT_WEIGHT
        else:
            quota.CopyFrom(current)
            quota.project = quota.project or name
        if deserved is not None:
            quota.deserved_milli = deserved
        if deserved_memory is not None:
            quota.deserved_memory_bytes = deserved_memory
        if over_quota_weight is not None:
            quota.over_quota_weight = over_quota_weight
        if limit is not None:
            quota.limit_milli = limit
        if limit_memory is not None:
            quota.limit_memory_bytes = limit_memory
        if member_list is not None:
            del quota.members[:]
            quota.members.extend(member_list)
        given = {
            "deserved_milli": deserved,
            "deserved_memory_bytes": deserved_memory,
            "limit_milli": limit,
            "limit_memory_bytes": limit_memory,
        }
        kept = {field for field, value in given.items() if value is None} if current is not None else set()
        check_limits(quota, kept=kept)
        request = admin_pb2.SetQuotaRequest(quota=quota)
        response: admin_pb2.SetQuotaResponse = daemon.call(daemon.admin.SetQuota, request)
    if as_json:
        render.print_json(render.message_dict(response))
    else:
        done = response.project.quota if response.project.HasField("quota") else quota
        verb = "updated" if current is not None else "created"
        render.print_line(f"quota of project {done.project or name} {verb}: {summary(done)}")
    render.print_warnings(response.warnings)


def check_project(project: str) -> str:
    """The project name as given, or a usage error for an empty one or one with blanks."""
    if not project.strip():
        raise CliError(exit_codes.USAGE, "the project name is empty; give it as its leases name it")
    if project != project.strip() or any(char.isspace() for char in project):
        raise CliError(exit_codes.USAGE, f"project name {project!r} has blanks; give it as its leases name it")
    return project


def current_quota(daemon: Daemon, project: str) -> types_pb2.Quota | None:
    """The project's quota now, or None when it has none (NOT_FOUND, or listed only for its leases)."""
    try:
        response: admin_pb2.GetQuotaResponse = daemon.call(
            daemon.admin.GetQuota, admin_pb2.GetQuotaRequest(project=project)
        )
    except CliError as exc:
        if exc.exit_code == exit_codes.NOT_FOUND:  # PROJECT_NOT_FOUND: a new project
            return None
        raise
    if not response.project.configured:
        return None
    return response.project.quota


def check_limits(quota: types_pb2.Quota, *, kept: set[str]) -> None:
    """A usage error when a limit is below its deserved amount (0 means no limit).

    `kept`: the fields taken from the current quota rather than from a flag; the message says which.
    """

    def current(field: str) -> str:
        return " (current)" if field in kept else ""

    if quota.limit_milli and quota.limit_milli < quota.deserved_milli:
        least = cells.gpus(quota.deserved_milli).removesuffix(" GPU")
        raise CliError(
            exit_codes.USAGE,
            f"the limit {cells.gpus(quota.limit_milli)}{current('limit_milli')} is below the deserved "
            f"{cells.gpus(quota.deserved_milli)}{current('deserved_milli')}; give --limit {least}gpu or more "
            "(none: no limit), or a lower --deserved",
        )
    if quota.limit_memory_bytes and quota.limit_memory_bytes < quota.deserved_memory_bytes:
        least = cells.memory(quota.deserved_memory_bytes)
        raise CliError(
            exit_codes.USAGE,
            f"the memory limit {cells.memory(quota.limit_memory_bytes)}{current('limit_memory_bytes')} is below "
            f"the deserved memory {least}{current('deserved_memory_bytes')}; give --limit-memory {least} or more "
            "(none: no limit), or a lower --deserved-memory",
        )


def summary(quota: types_pb2.Quota) -> str:
    """'deserved 4 GPU, 320GiB; limit 8 GPU, 640GiB; over-quota weight 2'."""
    return (
        f"deserved {cells.capacity(quota.deserved_milli, quota.deserved_memory_bytes)}; "
        f"limit {cells.limit(quota.limit_milli, quota.limit_memory_bytes)}; "
        f"over-quota weight {cells.weight(quota.over_quota_weight)}; "
        f"members {', '.join(quota.members) if quota.members else 'none (admins only)'}"
    )

"""`vgpuctl gpus`: every physical GPU of the pool, its mode and how much of it is handed out."""

from __future__ import annotations

from typing import Annotated

import typer

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.render import Column, JsonFlag
from vgpuctl._private.transport import Daemon, connect, target_of

NodeFilter = Annotated[str | None, typer.Option("--node", metavar="NODE", help="Only this node's GPUs.")]

COLUMNS = (
    Column("NODE"),
    Column("IDX", justify_right=True),
    Column("UUID"),
    Column("MODEL", elastic=True),
    Column("MODE"),
    Column("MEMORY", justify_right=True),
    Column("COMPUTE", justify_right=True),
    Column("LEASES", justify_right=True),
    Column("HEALTH"),
)


def gpus(ctx: typer.Context, node: NodeFilter = None, as_json: JsonFlag = False) -> None:
    """List GPUs: MEMORY and COMPUTE are allocated/total, LEASES counts slices; --json has full uuids."""
    with connect(target_of(ctx)) as daemon:
        listed = list_gpus(daemon, node or "")
    if as_json:
        render.print_messages(listed)
    elif not listed:
        render.print_empty("GPUs")
    else:
        render.print_table(COLUMNS, [row(gpu) for gpu in listed])


def list_gpus(daemon: Daemon, node: str = "") -> list[types_pb2.Gpu]:
    """The GPUs of one node (all nodes for ""), ordered by node and index."""
    response: admin_pb2.ListGpusResponse = daemon.call(daemon.admin.ListGpus, admin_pb2.ListGpusRequest(node=node))
    return sorted(response.gpus, key=lambda gpu: (gpu.node, gpu.index))


def row(gpu: types_pb2.Gpu) -> list[str]:
    """One table row."""
    return [
        gpu.node,
        str(gpu.index),
        cells.short_uuid(gpu.uuid),
        gpu.model or gpu.name or cells.NONE,
        cells.gpu_mode(gpu.mode),
        cells.usage_of(gpu.allocated.memory_bytes, gpu.memory_bytes),
        cells.share_of(gpu.allocated.compute_milli),
        str(gpu.allocated.slices),
        "ok" if gpu.healthy else "unhealthy",
    ]

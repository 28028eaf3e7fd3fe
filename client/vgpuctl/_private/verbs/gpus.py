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
    Column("MIG", justify_right=True),
    Column("MEMORY", justify_right=True),
    Column("COMPUTE", justify_right=True),
    Column("LEASES", justify_right=True),
    Column("HEALTH"),
)


def gpus(ctx: typer.Context, node: NodeFilter = None, as_json: JsonFlag = False) -> None:
    """List GPUs by NODE: MEMORY and COMPUTE are allocated/total, LEASES counts slices; --json has full uuids.

    MODE reads e.g. mig(pending) until the node daemon has switched the hardware to it.

    MIG: memory slices taken by MIG instances/all, in MIG mode; `vgpuctl mig show` has the detail.

    HEALTH is ok, unhealthy, or node-down for the GPUs of a node whose daemon is gone (vgpuctl nodes: down).
    """
    with connect(target_of(ctx)) as daemon:
        listed = list_gpus(daemon, node or "")
        down = set() if as_json or not listed else down_nodes(daemon)
    if as_json:
        render.print_messages(listed)
    elif not listed:
        render.print_empty("GPUs")
    else:
        render.print_table(COLUMNS, [row(gpu, node_down=gpu.node in down) for gpu in listed])


def list_gpus(daemon: Daemon, node: str = "") -> list[types_pb2.Gpu]:
    """The GPUs of one node (all nodes for ""), ordered by node and index."""
    response: admin_pb2.ListGpusResponse = daemon.call(daemon.admin.ListGpus, admin_pb2.ListGpusRequest(node=node))
    return sorted(response.gpus, key=lambda gpu: (gpu.node, gpu.index))


def down_nodes(daemon: Daemon) -> set[str]:
    """Names of the nodes the pool lists as DOWN (their GPUs are registered, their daemon is gone)."""
    response: admin_pb2.ListNodesResponse = daemon.call(daemon.admin.ListNodes, admin_pb2.ListNodesRequest())
    return {node.name for node in response.nodes if node.state == types_pb2.NODE_STATE_DOWN}


def row(gpu: types_pb2.Gpu, *, node_down: bool = False) -> list[str]:
    """One table row."""
    return [
        gpu.node,
        str(gpu.index),
        cells.short_uuid(gpu.uuid),
        gpu.model or gpu.name or cells.NONE,
        cells.gpu_mode(gpu.mode) + ("(pending)" if gpu.mode_pending else ""),
        mig_slots(gpu),
        cells.usage_of(gpu.allocated.memory_bytes, gpu.memory_bytes),
        cells.share_of(gpu.allocated.compute_milli),
        str(gpu.allocated.slices),
        cells.gpu_health(gpu, node_down=node_down),
    ]


def mig_slots(gpu: types_pb2.Gpu) -> str:
    """'3/8': memory slices covered by MIG instances, of the model's; '-' outside MIG mode or without MIG."""
    if gpu.mode != types_pb2.GPU_MODE_MIG or not gpu.mig_memory_slices:
        return cells.NONE
    covered = {slot for inst in gpu.mig_instances for slot in range(inst.start, inst.start + inst.size)}
    return f"{len(covered & set(range(gpu.mig_memory_slices)))}/{gpu.mig_memory_slices}"

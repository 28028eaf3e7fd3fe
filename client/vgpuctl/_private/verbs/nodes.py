"""`vgpuctl nodes`: every vgpud host of the pool, its state and how to reach it."""

from __future__ import annotations

import typer

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.render import Column, JsonFlag
from vgpuctl._private.transport import connect, target_of

COLUMNS = (
    Column("NAME"),
    Column("STATE"),
    Column("GPUS", justify_right=True),
    Column("BACKEND", elastic=True),
    Column("ENDPOINT", elastic=True),
    Column("TCP", elastic=True),
    Column("VERSION", elastic=True),
    Column("UP SINCE"),
)


def nodes(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the nodes: NAME, STATE (ready/draining/down), GPUS, BACKEND, ENDPOINT, TCP, VERSION, UP SINCE.

    TCP is the mutual-TLS listener other daemons dial to start a multi-node job's ranks there.
    """
    with connect(target_of(ctx)) as daemon:
        response: admin_pb2.ListNodesResponse = daemon.call(daemon.admin.ListNodes, admin_pb2.ListNodesRequest())
    listed = sorted(response.nodes, key=lambda node: node.name)
    if as_json:
        render.print_messages(listed)
    elif not listed:
        render.print_empty("nodes")
    else:
        render.print_table(COLUMNS, [row(node) for node in listed])


def row(node: types_pb2.Node) -> list[str]:
    """One table row."""
    return [
        node.name,
        cells.node_state(node),
        str(node.gpu_count),
        node.backend or cells.NONE,
        node.endpoint or cells.NONE,
        node.tcp_endpoint or cells.NONE,
        node.version or cells.NONE,
        cells.timestamp(node.started_at),
    ]

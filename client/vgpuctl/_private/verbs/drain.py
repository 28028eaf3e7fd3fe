"""`vgpuctl drain`: stop new work from landing on a node (or take it back into service with --undo)."""

from __future__ import annotations

from typing import Annotated

import typer

from vgpu.api.v1 import admin_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.render import JsonFlag
from vgpuctl._private.transport import connect, target_of

NodeName = Annotated[str, typer.Argument(metavar="NODE", help="The node, as `vgpuctl nodes` shows it.")]
UndoFlag = Annotated[bool, typer.Option("--undo", help="Take the node back into service instead.")]


def drain(ctx: typer.Context, node: NodeName, undo: UndoFlag = False, as_json: JsonFlag = False) -> None:
    """Drain a node: no new leases land there, existing ones finish normally; prints the node's new state."""
    request = admin_pb2.DrainNodeRequest(node=node, undrain=undo)
    with connect(target_of(ctx)) as daemon:
        response: admin_pb2.DrainNodeResponse = daemon.call(daemon.admin.DrainNode, request)
    if as_json:
        render.print_json(render.message_dict(response.node))
    else:
        render.print_line(f"node {response.node.name or node}: {cells.node_state(response.node)}")

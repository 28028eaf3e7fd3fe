"""`vgpuctl gpu mode`: switch a GPU between shared, mig and exclusive (refused while leases are on it).

The GPU may be named by its full uuid, by a unique prefix of it, such as the 'GPU-1a2b3c4d…' that
`vgpuctl gpus` shows (the trailing '…' and the 'GPU-' may be left off), or as NODE:INDEX (the NODE and
IDX columns of `vgpuctl gpus`, e.g. gpu-07:0): a prefix or an index is looked up in the GPU list first;
a full uuid goes to the daemon as given.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Annotated, Final

import typer

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import cells, exit_codes, render
from vgpuctl._private.errors import CliError
from vgpuctl._private.render import JsonFlag
from vgpuctl._private.transport import Daemon, connect, target_of
from vgpuctl._private.verbs.gpus import list_gpus

_FULL_UUID: Final = re.compile(r"^(GPU|MIG)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_AMBIGUITY_SHOWN: Final = 4


class Mode(enum.StrEnum):
    """The modes a GPU can be put in, as typed on the command line."""

    SHARED = "shared"
    MIG = "mig"
    EXCLUSIVE = "exclusive"


_PROTO_MODE: Final = {
    Mode.SHARED: types_pb2.GPU_MODE_SHARED,
    Mode.MIG: types_pb2.GPU_MODE_MIG,
    Mode.EXCLUSIVE: types_pb2.GPU_MODE_EXCLUSIVE,
}

GpuName = Annotated[
    str,
    typer.Argument(
        metavar="GPU",
        help="The GPU's uuid, a unique prefix of it as `vgpuctl gpus` shows, or NODE:INDEX (e.g. gpu-07:0).",
    ),
]
ModeChoice = Annotated[Mode, typer.Argument(metavar="MODE", help="shared, mig or exclusive.", case_sensitive=False)]


def mode(ctx: typer.Context, gpu: GpuName, new_mode: ModeChoice, as_json: JsonFlag = False) -> None:
    """Set a GPU's mode; the daemon refuses (GPU_BUSY) while leases hold slices on it."""
    with connect(target_of(ctx)) as daemon:
        uuid = resolve_gpu(daemon, gpu)
        request = admin_pb2.SetGpuModeRequest(gpu_uuid=uuid, mode=_PROTO_MODE[new_mode])
        response: admin_pb2.SetGpuModeResponse = daemon.call(daemon.admin.SetGpuMode, request)
    if as_json:
        render.print_json(render.message_dict(response.gpu))
    else:
        changed = response.gpu
        pending = " (pending: the node daemon switches the hardware next)" if changed.mode_pending else ""
        render.print_line(
            f"GPU {changed.uuid or uuid} (node {changed.node or '?'}, index {changed.index}): "
            f"mode {cells.gpu_mode(changed.mode) if changed.mode else new_mode.value}{pending}"
        )


def resolve_gpu(daemon: Daemon, given: str) -> str:
    """The full uuid for what the user typed: as is if full, else the GPU at NODE:INDEX or the one it prefixes."""
    text = given.strip().removesuffix("…").removesuffix("...")
    if _FULL_UUID.match(text):
        return text
    if not text:
        raise CliError(exit_codes.USAGE, "empty GPU uuid; list the GPUs with `vgpuctl gpus`")
    if ":" in text:  # no GPU uuid has one
        return gpu_at(list_gpus(daemon), text)
    wanted = text.lower()
    known = [gpu.uuid for gpu in list_gpus(daemon)]
    exact = [uuid for uuid in known if uuid.lower() == wanted]
    if exact:
        return exact[0]
    matches = [uuid for uuid in known if uuid.lower().startswith((wanted, f"gpu-{wanted}"))]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CliError(
            exit_codes.NOT_FOUND,
            f"GPU_NOT_FOUND: no GPU uuid starts with {given!r}; list them with `vgpuctl gpus`",
        )
    shown = ", ".join(matches[:_AMBIGUITY_SHOWN]) + (", ..." if len(matches) > _AMBIGUITY_SHOWN else "")
    raise CliError(exit_codes.USAGE, f"{given!r} matches {len(matches)} GPUs ({shown}); give more of the uuid")


def gpu_at(known: Sequence[types_pb2.Gpu], given: str) -> str:
    """The uuid of the GPU at 'NODE:INDEX'; an unknown node or index is NOT_FOUND naming what there is."""
    node, _, index = given.rpartition(":")
    if not node or not index.isdigit():
        raise CliError(
            exit_codes.USAGE, f"{given!r} is neither a GPU uuid nor NODE:INDEX (e.g. gpu-07:0, as `vgpuctl gpus` shows)"
        )
    on_node = {gpu.index: gpu.uuid for gpu in known if gpu.node == node}
    if not on_node:
        nodes = sorted({gpu.node for gpu in known})
        shown = ", ".join(nodes[:_AMBIGUITY_SHOWN]) + (", ..." if len(nodes) > _AMBIGUITY_SHOWN else "")
        raise CliError(
            exit_codes.NOT_FOUND,
            f"GPU_NOT_FOUND: no node {node!r} in the pool (nodes with GPUs: {shown or 'none'}); see `vgpuctl gpus`",
        )
    uuid = on_node.get(int(index))
    if uuid is None:
        indexes = ", ".join(str(i) for i in sorted(on_node))
        raise CliError(
            exit_codes.NOT_FOUND,
            f"GPU_NOT_FOUND: node {node} has no GPU {index} (its GPUs: {indexes}); see `vgpuctl gpus --node {node}`",
        )
    return uuid

"""`vgpuctl mig show`: the MIG instances on each MIG-capable GPU, as a bar of memory slices, and what still fits.

One block per GPU: which instance covers each memory slice (a letter per instance, '.' free), a legend
naming each instance's profile, state, MIG uuid and lease, and the profiles that can still be created.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Final

import typer

from vgpu.api.v1 import types_pb2
from vgpuctl._private import cells, render
from vgpuctl._private.render import JsonFlag
from vgpuctl._private.transport import connect, target_of
from vgpuctl._private.verbs.gpus import NodeFilter, list_gpus

FREE: Final = "."
"""What a free memory slice shows in the bar."""
_LETTERS: Final = string.ascii_uppercase
_JSON_FIELDS: Final = (
    "node",
    "index",
    "uuid",
    "model",
    "mode",
    "mode_pending",
    "mig_memory_slices",
    "mig_instances",
    "mig_fits",
)
"""What `--json` keeps of each GPU: where it is and its MIG data (`vgpuctl gpus --json` has the rest)."""


def show(ctx: typer.Context, node: NodeFilter = None, as_json: JsonFlag = False) -> None:
    """Show each MIG-capable GPU's instances: one letter per memory slice ('.' free), then what still fits.

    Legend: letter, start, profile, state (creating, ready, warm, releasing, foreign), MIG uuid, lease.

    Foreign instances were made by hand, not by vgpu; vgpu never destroys them. --json has full uuids.
    """
    with connect(target_of(ctx)) as daemon:
        listed = [gpu for gpu in list_gpus(daemon, node or "") if gpu.mig_memory_slices > 0]
    if as_json:
        render.print_json([mig_dict(gpu) for gpu in listed])
    elif not listed:
        render.print_empty("MIG-capable GPUs")
    else:
        render.print_line("\n\n".join("\n".join(block(gpu)) for gpu in listed))


def mig_dict(gpu: types_pb2.Gpu) -> dict[str, Any]:
    """One GPU's MIG data as JSON: proto field names, zero values included, like every --json."""
    full = render.message_dict(gpu)
    return {field: full[field] for field in _JSON_FIELDS}


def block(gpu: types_pb2.Gpu) -> list[str]:
    """The lines of one GPU: header, slot numbers, bar, legend, what still fits."""
    mode = cells.gpu_mode(gpu.mode) + (" (pending)" if gpu.mode_pending else "")
    model = gpu.model or gpu.name or cells.NONE
    letters = dict(zip(sorted(inst.start for inst in gpu.mig_instances), _LETTERS, strict=False))
    width = len(str(max(gpu.mig_memory_slices - 1, 0)))
    lines = [
        f"{gpu.node} gpu {gpu.index}  {cells.short_uuid(gpu.uuid)}  {model}  mode {mode}",
        "  slot " + " ".join(str(slot).rjust(width) for slot in range(gpu.mig_memory_slices)),
        "       " + " ".join(cell.rjust(width) for cell in bar(gpu, letters)),
    ]
    legend = [
        [
            letters.get(inst.start, "?"),
            f"@{inst.start}",
            inst.profile or cells.NONE,
            cells.enum_word(types_pb2.MigInstanceState.Name(inst.state), "MIG_INSTANCE_STATE_"),
            cells.short_uuid(inst.uuid),
            inst.lease_id or cells.NONE,
        ]
        for inst in sorted(gpu.mig_instances, key=lambda inst: inst.start)
    ]
    lines.extend("  " + line for line in _aligned(legend))
    lines.append("  " + fits_line(gpu))
    return lines


def bar(gpu: types_pb2.Gpu, letters: dict[int, str]) -> list[str]:
    """Per memory slice, the letter of the instance covering it, or FREE."""
    slots = [FREE] * gpu.mig_memory_slices
    for inst in gpu.mig_instances:
        for slot in range(inst.start, min(inst.start + max(inst.size, 1), len(slots))):
            slots[slot] = letters.get(inst.start, "?")
    return slots


def fits_line(gpu: types_pb2.Gpu) -> str:
    """'still fits: 3g.40gb x1, 1g.10gb x3', 'still fits: nothing', or how to turn MIG on."""
    if gpu.mode != types_pb2.GPU_MODE_MIG:
        return f"MIG is off: vgpuctl gpu mode {gpu.uuid} mig"
    if gpu.mode_pending:
        return "still fits: nothing yet (the node daemon switches the hardware to MIG next)"
    fits = ", ".join(f"{fit.profile} x{fit.more}" for fit in gpu.mig_fits)
    return f"still fits: {fits or 'nothing'}"


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows with each column padded to its widest cell, two blanks apart, no trailing blanks."""
    if not rows:
        return []
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]

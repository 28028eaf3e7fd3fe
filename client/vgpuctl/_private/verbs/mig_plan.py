"""`vgpuctl mig plan LAYOUT.toml`: what a declarative MIG layout would create, destroy and keep. A dry run.

The file is read here and sent whole; the daemon parses it against the pool as it is now, so a bad layout
comes back as one INVALID_REQUEST line naming the TOML line or the field.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Final

import typer

from vgpu.api.v1 import admin_pb2
from vgpuctl._private import cells, exit_codes, render
from vgpuctl._private.errors import CliError
from vgpuctl._private.render import Column, JsonFlag
from vgpuctl._private.transport import connect, target_of

STDIN: Final = "-"

LayoutFile = Annotated[
    str, typer.Argument(metavar="LAYOUT.toml", help="The layout file (TOML), or - to read it from stdin.")
]

COLUMNS = (
    Column("ACTION"),
    Column("NODE"),
    Column("GPU"),
    Column("PROFILE"),
    Column("START", justify_right=True),
    Column("BLOCKED BY", elastic=True),
)

_DRY_RUN: Final = "dry run: nothing was changed"


def plan(ctx: typer.Context, layout: LayoutFile, as_json: JsonFlag = False) -> None:
    r"""Dry run: list the steps that would turn the pool's MIG instances into LAYOUT.toml; changes nothing.

    A layout lists, per GPU model or per GPU uuid, the instances a GPU should hold; profile@start pins a start:

    \[models."h100-80gb"]
    profiles = \["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    \[gpus."GPU-5d3c0e2a-..."]
    profiles = \["4g.40gb@0", "3g.40gb@4"]

    A GPU entry wins over its model's; GPUs matched by neither are left alone.

    A GPU may also be named NODE:INDEX, e.g. \[gpus."gpu-07:0"] (the NODE and IDX of `vgpuctl gpus`).

    BLOCKED BY: why a step cannot be taken now (a lease holds the instance, vgpu did not make it, not MIG mode).
    """
    text = read_layout(layout)
    with connect(target_of(ctx)) as daemon:
        request = admin_pb2.PlanMigLayoutRequest(layout_toml=text)
        response: admin_pb2.PlanMigLayoutResponse = daemon.call(daemon.admin.PlanMigLayout, request)
    if as_json:
        render.print_messages(response.steps)
    elif not response.steps:
        render.print_line(f"nothing to do: no GPU the layout matches has or needs a MIG instance ({_DRY_RUN})")
    else:
        render.print_table(COLUMNS, [row(step) for step in response.steps])
        render.print_line("")
        render.print_line(summary(response.steps))


def read_layout(path: str) -> str:
    """The layout file's text; a file that cannot be read is a usage error naming it."""
    if path == STDIN:
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(exit_codes.USAGE, f"layout file {path!r} does not exist") from None
    except UnicodeDecodeError:
        raise CliError(exit_codes.USAGE, f"layout file {path!r} is not UTF-8 text") from None
    except OSError as exc:
        raise CliError(exit_codes.USAGE, f"cannot read layout file {path!r}: {exc.strerror or exc}") from None


def action(step: admin_pb2.MigPlanStep) -> str:
    """The action word: create, destroy or keep."""
    return cells.enum_word(admin_pb2.MigPlanStep.Action.Name(step.action), "ACTION_")


def row(step: admin_pb2.MigPlanStep) -> list[str]:
    """One table row."""
    return [
        action(step),
        step.node or cells.NONE,
        cells.short_uuid(step.gpu_uuid),
        step.profile or cells.NONE,
        str(step.start),
        step.blocked_by or cells.NONE,
    ]


def summary(steps: Sequence[admin_pb2.MigPlanStep]) -> str:
    """'2 to create, 1 to destroy, 3 to keep, 1 blocked (dry run: nothing was changed)'."""
    counts = Counter(action(step) for step in steps)
    blocked = sum(1 for step in steps if step.blocked_by)
    return (
        f"{counts['create']} to create, {counts['destroy']} to destroy, {counts['keep']} to keep, "
        f"{blocked} blocked ({_DRY_RUN})"
    )

"""Writing results to stdout: borderless tables for people, JSON for scripts (`--json`).

Off a TTY the table is plain text (no ANSI codes), never wrapped or cut, without trailing blanks, so
`grep` and `awk` work; on a narrow TTY only the long descriptive columns are cut with '…', never names,
ids, states or numbers.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, cast

import typer
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
"""The `--json` flag every read command takes."""

_PIPE_WIDTH: Final = 100_000
"""Console width off a TTY: wide enough that no row is ever wrapped or cut when piped."""
_COLUMN_GAP: Final = 2
"""Blank cells between two columns (rich's default padding of one on each side)."""
_ELASTIC_MIN_WIDTH: Final = 12
"""An elastic column is never cut below this many cells, so what is left still says something."""


@dataclass(frozen=True)
class Column:
    """A table column; on a TTY too narrow for the table only `elastic` columns are cut (with '…')."""

    header: str
    elastic: bool = False
    justify_right: bool = False


def message_dict(message: Message) -> dict[str, Any]:
    """A proto message as JSON-ready data: field names as in the .proto, zero values included, int64 as numbers.

    protobuf's JSON mapping writes 64-bit integers as strings (for JavaScript's sake); scripts reading
    `memory_bytes` want a number, and Python's json keeps every digit.
    """
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers_in(cast(Descriptor, message.DESCRIPTOR), data)  # upb's Descriptor has the same fields
    return data


_INT64_TYPES: Final = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_INT64_WRAPPERS: Final = frozenset({"google.protobuf.Int64Value", "google.protobuf.UInt64Value"})


def _numbers_in(descriptor: Descriptor, data: dict[str, Any]) -> None:
    """Turn the 64-bit integer fields of `data` (MessageToDict of a `descriptor` message) into ints, in place."""
    for field in descriptor.fields:
        if field.name not in data:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            entries: dict[str, Any] = data[field.name]
            for key, value in entries.items():
                entries[key] = _number_of(value_field, value)
        elif field.is_repeated:
            data[field.name] = [_number_of(field, item) for item in data[field.name]]
        else:
            data[field.name] = _number_of(field, data[field.name])


def _number_of(field: FieldDescriptor, value: Any) -> Any:
    """One value of `field` with its 64-bit integers as ints (well-known types other than wrappers as they are)."""
    message_type = field.message_type
    if message_type is None:
        return int(value) if field.type in _INT64_TYPES else value
    if message_type.full_name in _INT64_WRAPPERS:
        return int(value)
    if message_type.full_name.startswith("google.protobuf.") or not isinstance(value, dict):
        return value  # Timestamp, Duration, Any, Struct...: their JSON forms hold no int64 of ours
    _numbers_in(message_type, value)
    return value


def print_json(value: object) -> None:
    """Write one JSON document (a list or an object) to stdout."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def print_messages(messages: Iterable[Message]) -> None:
    """`--json` output of a list command: a JSON list of the messages."""
    print_json([message_dict(message) for message in messages])


def print_line(text: str) -> None:
    """One plain line of output (the answer of a write command)."""
    sys.stdout.write(text + "\n")


def print_empty(what: str) -> None:
    """Say on stderr that a list is empty, keeping stdout empty for scripts (like `kubectl get`)."""
    sys.stderr.write(f"No {what} found.\n")


def print_warnings(warnings: Iterable[str]) -> None:
    """Each of the daemon's warnings as one 'warning: ...' line on stderr, after what stdout has so far."""
    lines = ["warning: " + " ".join(warning.split()) for warning in warnings if warning.strip()]
    if lines:
        sys.stdout.flush()
        sys.stderr.write("".join(line + "\n" for line in lines))
        sys.stderr.flush()


def print_fields(pairs: Sequence[tuple[str, str]]) -> None:
    """'key:  value' lines with the values aligned, for one object (`vgpuctl quota get`)."""
    width = max((len(key) for key, _ in pairs), default=0) + 1
    for key, value in pairs:
        print_line(f"{key + ':':<{width}}  {value}".rstrip())


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """Write a borderless table with a header row."""
    naturals = [
        max([cell_len(column.header), *(cell_len(row[index]) for row in rows)]) for index, column in enumerate(columns)
    ]
    gaps = _COLUMN_GAP * (len(columns) - 1)
    tty = sys.stdout.isatty()
    buffer = io.StringIO()
    if tty:
        console = Console(file=sys.stdout, highlight=False)
        widths = fit_widths(columns, naturals, console.width - gaps)
        console.width = max(console.width, sum(widths) + gaps)
    else:
        console = Console(file=buffer, width=_PIPE_WIDTH, color_system=None, highlight=False)
        widths = naturals
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold" if tty else None)
    for column, width in zip(columns, widths, strict=True):
        table.add_column(
            column.header,
            justify="right" if column.justify_right else "left",
            no_wrap=True,
            overflow="ellipsis",
            width=width,
        )
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: a '[' in a value is not rich markup
    console.print(table, crop=False)
    if not tty:
        sys.stdout.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def fit_widths(columns: Sequence[Column], naturals: Sequence[int], room: int) -> list[int]:
    """Column widths within `room` cells, taken from the widest elastic columns first, none below its floor.

    When even that does not fit, every column keeps its natural width and the terminal wraps the lines:
    better than losing names, ids or numbers.
    """
    widths = list(naturals)
    floors = [
        min(natural, _ELASTIC_MIN_WIDTH) if column.elastic else natural
        for column, natural in zip(columns, naturals, strict=True)
    ]
    excess = sum(widths) - room
    while excess > 0:
        shrinkable = [index for index, width in enumerate(widths) if width > floors[index]]
        if not shrinkable:
            return list(naturals)
        widest = max(shrinkable, key=lambda index: widths[index])
        widths[widest] -= 1
        excess -= 1
    return widths

"""vgpuctl's output: tables plain when piped, cut only in descriptive columns on a narrow terminal; JSON numbers."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from vgpu.api.v1 import admin_pb2, types_pb2
from vgpuctl._private import render
from vgpuctl._private.render import Column

COLUMNS = (Column("ID"), Column("STATE"), Column("SLICES", elastic=True), Column("AGE", justify_right=True))
ROWS = [
    ["lease-0123456789ab", "granted", "GPU-1a2b3c4d… 20GiB/0.5, GPU-5e6f7a8b… 20GiB/0.5", "3m"],
    ["lease-[bracketed]", "pending", "wants 8GiB/0.25", "12s"],
]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def printed(monkeypatch: pytest.MonkeyPatch, stdout: io.StringIO) -> str:
    monkeypatch.setattr("sys.stdout", stdout)
    render.print_table(COLUMNS, ROWS)
    return stdout.getvalue()


def test_piped_table_is_plain_whole_and_without_trailing_blanks(monkeypatch: pytest.MonkeyPatch) -> None:
    out = printed(monkeypatch, io.StringIO())
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "SLICES", "AGE"]
    assert ROWS[0][2] in lines[1]
    assert "lease-[bracketed]" in lines[2]
    assert all(line == line.rstrip() for line in lines)


def test_narrow_terminal_cuts_only_elastic_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    out = printed(monkeypatch, Terminal())
    assert "\x1b[" in out  # bold header on a TTY
    for line in out.splitlines():
        assert len(line.rstrip()) <= 60 or "\x1b[" in line
    assert "lease-0123456789ab" in out
    assert "GPU-1a2b3c4d… 20GiB/0.5, GPU-5e6f7a8b… 20GiB/0.5" not in out
    assert "…" in out.splitlines()[1]
    assert "3m" in out


def test_too_narrow_terminal_keeps_every_cell_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    out = printed(monkeypatch, Terminal())
    for row in ROWS:
        for cell in row:
            assert cell in out


# --- --json: 64-bit integers as numbers --------------------------------------------------------------


def sample_class() -> Any:
    """A message with what our protos do not have yet: a map to int64, repeated uint64, an Int64Value."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    entry = descriptor_pb2.DescriptorProto(
        name="CountsEntry",
        field=[
            field(name="key", number=1, type=field.TYPE_STRING, label=optional),
            field(name="value", number=2, type=field.TYPE_INT64, label=optional),
        ],
        options=descriptor_pb2.MessageOptions(map_entry=True),
    )
    sample = descriptor_pb2.DescriptorProto(
        name="Sample",
        nested_type=[entry],
        field=[
            field(name="counts", number=1, type=field.TYPE_MESSAGE, label=repeated, type_name=".t.Sample.CountsEntry"),
            field(name="sizes", number=2, type=field.TYPE_UINT64, label=repeated),
            field(
                name="wrapped",
                number=3,
                type=field.TYPE_MESSAGE,
                label=optional,
                type_name=".google.protobuf.Int64Value",
            ),
            field(name="name", number=4, type=field.TYPE_STRING, label=optional),
        ],
    )
    file = descriptor_pb2.FileDescriptorProto(
        name="t.proto",
        package="t",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
        message_type=[sample],
    )
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Sample"))


def test_json_has_int64_fields_as_numbers_nested_and_repeated() -> None:
    big = 2**63 + 5  # beyond a double's exact range: Python's json keeps every digit
    answer = admin_pb2.ListGpusResponse(
        gpus=[
            types_pb2.Gpu(
                uuid="GPU-1",
                node="12345",  # a string of digits stays a string
                memory_bytes=big,
                allocated=types_pb2.GpuAllocation(memory_bytes=20 * 1024**3, compute_milli=500),
            )
        ]
    )
    as_json = json.loads(json.dumps(render.message_dict(answer)))
    gpu = as_json["gpus"][0]
    assert gpu["memory_bytes"] == big
    assert gpu["allocated"]["memory_bytes"] == 20 * 1024**3
    assert gpu["allocated"]["compute_milli"] == 500
    assert gpu["node"] == "12345"
    lease = render.message_dict(types_pb2.Lease(id="7", created_at=Timestamp(seconds=1_700_000_000)))
    assert lease["created_at"] == "2023-11-14T22:13:20Z"  # well-known types keep their JSON form
    assert lease["id"] == "7"


def test_json_has_int64_map_values_repeated_scalars_and_wrappers_as_numbers() -> None:
    sample = sample_class()(counts={"a": 3}, sizes=[1, 2**40], wrapped={"value": 9}, name="42")
    assert render.message_dict(sample) == {"counts": {"a": 3}, "sizes": [1, 2**40], "wrapped": 9, "name": "42"}

"""vgpuctl's tables: plain when piped, cut only in descriptive columns on a narrow terminal."""

from __future__ import annotations

import io

import pytest

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

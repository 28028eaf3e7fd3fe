"""The systemd unit and the example config that ship with vgpud, for `vgpud --print-unit` and `--print-config`.

In the source tree the two files here are links to systemd/, so the repository holds one copy of each; a wheel
holds their contents. Operators of an installed vgpud have no checkout to copy them from.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

UNIT_FILE = "vgpud.service"
CONFIG_FILE = "vgpud.toml"
_EXEC_START = "ExecStart="
# Characters that systemd reads specially in a command line word: quoting, escapes, specifiers, variables.
_NEEDS_QUOTES = frozenset("\"'\\")


def read(name: str) -> bytes:
    """One shipped file (UNIT_FILE or CONFIG_FILE), exactly as it ships."""
    return files(__name__).joinpath(name).read_bytes()


def unit_text(program: Sequence[str]) -> str:
    """The shipped unit with its ExecStart running `program` (argv words) instead of /usr/local/bin/vgpud.

    Only the program changes: the arguments after it (`--config /etc/vgpu/vgpud.toml`) are kept.
    """
    if not program:
        raise ValueError("program must name at least the executable")
    lines = read(UNIT_FILE).decode().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(_EXEC_START)]
    if len(starts) != 1:
        raise ValueError(f"the shipped {UNIT_FILE} has {len(starts)} ExecStart= lines, expected 1")
    line = lines[starts[0]]
    words = line[len(_EXEC_START) :].split(maxsplit=1)
    rest = f" {words[1].rstrip()}" if len(words) > 1 else ""
    ending = line[len(line.rstrip("\r\n")) :]
    lines[starts[0]] = f"{_EXEC_START}{' '.join(unit_word(word) for word in program)}{rest}{ending}"
    return "".join(lines)


def unit_word(word: str) -> str:
    """`word` written so that systemd's command line parsing gives it back unchanged."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in _NEEDS_QUOTES for c in word):
        return f'"{escaped}"'
    return escaped

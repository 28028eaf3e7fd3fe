"""Human units for memory ("20GiB", "512MB") and compute shares (0.5, "50%", 500 milli-GPU).

Shared by the SDK, the daemon and vgpuctl so that every door reads "20GiB" the same way.
"""

from __future__ import annotations

import re
from typing import Final

MILLI_PER_GPU: Final = 1000

_MEMORY_UNITS: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_MEMORY_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class UnitError(ValueError):
    """A memory size or compute share could not be read; the message says what is accepted."""


def parse_memory(value: str | int) -> int:
    """Bytes from "20GiB", "512MB", "1.5GiB" or a plain integer number of bytes."""
    if isinstance(value, bool):
        raise UnitError(f"memory must be a size such as '20GiB', not {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise UnitError(f"memory must be positive, got {value} bytes")
        return value
    match = _MEMORY_RE.match(value)
    if match is None:
        raise UnitError(f"cannot read memory size {value!r}: use a number and a unit such as '20GiB' or '512MB'")
    number, unit = match.groups()
    factor = _MEMORY_UNITS.get(unit.lower())
    if factor is None:
        raise UnitError(f"unknown memory unit {unit!r} in {value!r}: use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB")
    size = int(float(number) * factor)
    if size <= 0:
        raise UnitError(f"memory must be positive, got {value!r}")
    return size


def parse_compute(value: float | str) -> int:
    """Milli-GPU (1..1000) from a fraction (0.5), a percentage ("50%") or milli ("500m")."""
    if isinstance(value, bool):
        raise UnitError(f"compute must be a fraction such as 0.5, not {value!r}")
    fraction: float
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                fraction = float(text[:-1]) / 100
            elif text.endswith("m"):
                fraction = float(text[:-1]) / MILLI_PER_GPU
            else:
                fraction = float(text)
        except ValueError:
            raise UnitError(
                f"cannot read compute share {value!r}: use a fraction (0.5), a percentage ('50%') or milli-GPU ('500m')"
            ) from None
    else:
        fraction = float(value)
    milli = round(fraction * MILLI_PER_GPU)
    if not 1 <= milli <= MILLI_PER_GPU:
        raise UnitError(f"compute share {value!r} is outside 0.001..1.0 of a GPU (1..1000 milli-GPU)")
    return milli


def format_memory(size: int) -> str:
    """Shortest exact-ish binary rendering, e.g. 21474836480 -> '20GiB'."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{size}B"


def format_compute(milli: int) -> str:
    """Milli-GPU as a fraction of a GPU, e.g. 500 -> '0.5'."""
    return f"{milli / MILLI_PER_GPU:g}"

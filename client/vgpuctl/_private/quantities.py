"""Reading what an admin types for fair sharing: GPU capacity, memory, over-quota weights and durations.

Each parser takes the flag's text and returns the API value, or raises `typer.BadParameter` with what to
type instead; typer then reports it as one usage line (exit 2) before anything is sent to the daemon.

- GPU capacity: `4gpu`, `0.5gpu`, `2500m` (milli-GPU) or a bare number of GPUs -> milli-GPU (at most a
  million GPUs).
- Memory: the SDK's units (`320GiB`, `512MB`); `0` or `none` -> 0 (not bounded by memory); at most 1 EiB.
- Over-quota weights: 0.001 to 1000000.
- Durations: `30s`, `2m`, `1h`, `1m30s`, `500ms`, or a bare number of seconds.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Final

import typer
from google.protobuf.duration_pb2 import Duration

from vgpu._private.units import MILLI_PER_GPU, UnitError, parse_memory

NO_LIMIT_WORDS: Final = frozenset({"none", "unlimited"})
"""What a limit flag accepts besides a quantity to mean "no limit" (sent as 0)."""
MAX_MILLI: Final = 10**9
"""A million GPUs: the most a quota may name (the daemon refuses more); above is a unit mistake."""
MAX_MEMORY: Final = 2**60
"""1 EiB, the most quota memory the daemon accepts (a million GPUs of 1 TiB each)."""
WEIGHT_RANGE: Final = (1e-3, 1e6)
"""Over-quota weights the daemon accepts above 0: tinier or huger ones break the fair-share arithmetic."""
_MAX_DURATION_NANOS: Final = 315_576_000_000 * 10**9
"""protobuf Duration's largest span (10,000 years)."""

_CAPACITY_RE: Final = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(gpus?|m)?$", re.IGNORECASE)
_ZERO_RE: Final = re.compile(r"^0+(?:\.0*)?$")
_CAPACITY_FORMS: Final = "use GPUs such as 4gpu, 0.5gpu or a bare 4, or milli-GPU such as 2500m"
_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_NUMBER_RE: Final = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)$")
_DURATION_FORMS: Final = "use e.g. 30s, 2m, 1m30s, 1h, 7d or a bare number of seconds"
_NANOS_PER_UNIT: Final = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def parse_gpus(text: str) -> int:
    """Milli-GPU from '4gpu', '0.5gpu', '2500m' or '4' (GPUs); 0 is allowed, negatives and finer than milli not."""
    value = text.strip()
    if value.startswith("-"):
        raise typer.BadParameter(f"{text!r} is negative; GPU capacity is 0 or more ({_CAPACITY_FORMS})")
    match = _CAPACITY_RE.match(value)
    if match is None:
        if _is_memory(value):
            raise typer.BadParameter(
                f"{text!r} is a memory size, not GPU capacity: give memory with --deserved-memory or --limit-memory, "
                f"and GPUs here ({_CAPACITY_FORMS})"
            )
        raise typer.BadParameter(f"cannot read {text!r} as GPU capacity: {_CAPACITY_FORMS}")
    number, unit = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation:  # the pattern admits only plain decimals; kept as a guard
        raise typer.BadParameter(f"cannot read {text!r} as GPU capacity: {_CAPACITY_FORMS}") from None
    milli = amount if (unit or "").lower() == "m" else amount * MILLI_PER_GPU
    if milli != milli.to_integral_value():
        raise typer.BadParameter(f"{text!r} is finer than 1 milli-GPU (0.001gpu); round it, e.g. to {milli:.0f}m")
    if milli > MAX_MILLI:
        raise typer.BadParameter(
            f"{text!r} is more than any pool holds (at most {MAX_MILLI // MILLI_PER_GPU}gpu); "
            "check the unit: 2500m is 2.5gpu"
        )
    return int(milli)


def parse_gpu_limit(text: str) -> int:
    """Like `parse_gpus`, and 'none' / 'unlimited' / 0 for no limit (0)."""
    if text.strip().lower() in NO_LIMIT_WORDS:
        return 0
    return parse_gpus(text)


def parse_memory_amount(text: str) -> int:
    """Bytes from '320GiB', '512MB' (the SDK's units); '0', 'none' or 'unlimited' mean not bounded (0)."""
    value = text.strip()
    if value.lower() in NO_LIMIT_WORDS or _ZERO_RE.match(value):
        return 0
    if value.startswith("-"):
        raise typer.BadParameter(f"{text!r} is negative; give a size such as 320GiB, or 0 for no bound")
    try:
        size = parse_memory(value)
    except UnitError as exc:
        raise typer.BadParameter(str(exc)) from None
    except OverflowError:  # a number too long for a float
        size = MAX_MEMORY + 1
    if size > MAX_MEMORY:
        raise typer.BadParameter(
            f"{text!r} is more memory than any pool holds (at most 1 EiB, 1048576TiB); give a size such as 320GiB"
        )
    return size


def parse_weight(text: str) -> float:
    """A positive, finite over-quota weight such as 1, 2 or 0.5, from 0.001 to 1000000."""
    try:
        weight = float(text)
    except ValueError:
        raise typer.BadParameter(
            f"cannot read {text!r} as a weight: use a number above 0 such as 1, 2 or 0.5"
        ) from None
    if not math.isfinite(weight) or weight <= 0:
        raise typer.BadParameter(
            f"the weight must be a number above 0, got {text!r} "
            "(to stop a project borrowing idle GPUs, set --limit to its --deserved instead)"
        )
    low, high = WEIGHT_RANGE
    if not low <= weight <= high:
        raise typer.BadParameter(
            f"the weight {text!r} is outside {low:g} to {high:.0f}: weights are relative, so 1 and 2 say as much "
            "as 0.0001 and 0.0002"
        )
    return weight


def parse_duration(text: str) -> Duration:
    """A Duration from '30s', '2m', '1m30s', '500ms', '1h', '7d' or a bare number of seconds; it must be above 0."""
    value = text.strip()
    if value.startswith("-"):
        raise typer.BadParameter(f"{text!r} is negative: {_DURATION_FORMS}")
    if _DURATION_NUMBER_RE.match(value):
        nanos = Decimal(value) * _NANOS_PER_UNIT["s"]
    else:
        parts = list(_DURATION_PART_RE.finditer(value))
        if not parts or "".join(part.group(0) for part in parts) != value:
            raise typer.BadParameter(f"cannot read {text!r} as a duration: {_DURATION_FORMS}")
        nanos = sum((Decimal(part.group(1)) * _NANOS_PER_UNIT[part.group(2).lower()] for part in parts), Decimal(0))
    if nanos <= 0:
        raise typer.BadParameter(f"the duration must be above 0, got {text!r} (leave the flag out for the default)")
    if nanos > _MAX_DURATION_NANOS:
        raise typer.BadParameter(f"the duration {text!r} is longer than 10,000 years: {_DURATION_FORMS}")
    duration = Duration()
    duration.FromNanoseconds(int(nanos))
    return duration


def _is_memory(text: str) -> bool:
    """Whether `text` reads as a memory size with a unit, such as '320GiB' (a likely mix-up of flags)."""
    if not re.search(r"[a-zA-Z]", text):
        return False
    try:
        parse_memory(text)
    except UnitError:
        return False
    return True

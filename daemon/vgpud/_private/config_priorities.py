"""The [priority_classes.NAME] tables of vgpud's config: one priority class each, validated."""

from __future__ import annotations

import re
from typing import Any

from vgpud._private.core.priorities import PriorityClass

_CLASS_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_MAX_S = 7 * 24 * 3600.0


class PriorityConfigError(Exception):
    """A priority class table is unusable; the message is one line naming the key and what to change."""


def parse_priority_classes(value: object, origin: str) -> tuple[PriorityClass, ...]:
    """Classes from the [priority_classes] table; they replace the built-in inference/train/best-effort."""
    if not isinstance(value, dict) or not value:
        raise PriorityConfigError(f"{origin}: priority_classes: expected tables [priority_classes.NAME]")
    out = []
    for name, table in value.items():
        where = f"{origin}: priority_classes.{name}"
        if not _CLASS_NAME_RE.fullmatch(name):
            raise PriorityConfigError(f"{where}: a class name is 1 to 63 of a-z 0-9 . _ - (lower case)")
        if not isinstance(table, dict):
            raise PriorityConfigError(f"{where}: expected a table with value, preemptible, ...")
        out.append(_one(name, table, where))
    return tuple(out)


def _one(name: str, table: dict[str, Any], where: str) -> PriorityClass:
    known = {"value", "preemptible", "in_quota_only", "preempt_grace_s", "min_runtime_s"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise PriorityConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    value = table.get("value")
    if not isinstance(value, int) or isinstance(value, bool):
        raise PriorityConfigError(f"{where}.value: expected an integer (higher is served first)")
    flags: dict[str, bool] = {}
    for key, default in (("preemptible", True), ("in_quota_only", False)):
        flag = table.get(key, default)
        if not isinstance(flag, bool):
            raise PriorityConfigError(f"{where}.{key}: expected true or false")
        flags[key] = flag
    times: dict[str, float] = {}
    for key, fallback in (("preempt_grace_s", 30.0), ("min_runtime_s", 60.0)):
        seconds = table.get(key, fallback)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= _MAX_S:
            raise PriorityConfigError(f"{where}.{key}: expected seconds from 0 to {int(_MAX_S)}")
        times[key] = float(seconds)
    return PriorityClass(
        name,
        value,
        preemptible=flags["preemptible"],
        in_quota_only=flags["in_quota_only"],
        preempt_grace_s=times["preempt_grace_s"],
        min_runtime_s=times["min_runtime_s"],
    )

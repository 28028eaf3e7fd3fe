"""The [priority_classes.NAME] tables of vgpud's config: one priority class each, validated."""

from __future__ import annotations

import re
from typing import Any

from vgpud._private.core.priorities import PriorityClass

_CLASS_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_MAX_S = 7 * 24 * 3600.0
_MAX_PROJECTS = 1000
_MAX_CLASSES = 100
_MAX_VALUE = 1_000_000_000  # the API's PriorityClass.value is an int32
_PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class PriorityConfigError(Exception):
    """A priority class table is unusable; the message is one line naming the key and what to change."""


def parse_priority_classes(value: object, origin: str) -> tuple[PriorityClass, ...]:
    """Classes from the [priority_classes] table; they replace the built-in inference/train/best-effort."""
    if not isinstance(value, dict) or not value:
        raise PriorityConfigError(f"{origin}: priority_classes: expected tables [priority_classes.NAME]")
    if len(value) > _MAX_CLASSES:
        raise PriorityConfigError(f"{origin}: priority_classes: {len(value)} classes is more than {_MAX_CLASSES}")
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
    known = {"value", "preemptible", "in_quota_only", "preempt_grace_s", "min_runtime_s", "projects"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise PriorityConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    value = table.get("value")
    if not isinstance(value, int) or isinstance(value, bool) or not -_MAX_VALUE <= value <= _MAX_VALUE:
        raise PriorityConfigError(
            f"{where}.value: expected an integer from {-_MAX_VALUE} to {_MAX_VALUE} (higher is served first)"
        )
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
        projects=_projects(table.get("projects", []), where),
    )


def _projects(value: object, where: str) -> tuple[str, ...]:
    """The projects a class is limited to: a list of project names (at most 1000)."""
    if not isinstance(value, list) or len(value) > _MAX_PROJECTS:
        raise PriorityConfigError(f"{where}.projects: expected a list of at most {_MAX_PROJECTS} project names")
    for name in value:
        if not isinstance(name, str) or not _PROJECT_RE.fullmatch(name):
            raise PriorityConfigError(
                f"{where}.projects: {name!r} is not a project name (1 to 63 of A-Z a-z 0-9 . _ -)"
            )
    return tuple(value)

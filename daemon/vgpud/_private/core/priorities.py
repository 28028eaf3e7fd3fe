"""Priority classes: how a request ranks in the queue and whether its lease may be preempted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """One class from the daemon config ([priority_classes] table)."""

    name: str
    value: int
    """Higher goes first within a project and is preempted last."""
    preemptible: bool = True
    """False: the lease is never preempted (DESIGN.md invariant 3)."""
    in_quota_only: bool = False
    """Granted only within the project's deserved quota (never borrows, so never needs reclaiming)."""
    preempt_grace_s: float = 30.0
    """How long a lease of this class gets to checkpoint and acknowledge a PREEMPT."""
    min_runtime_s: float = 60.0
    """A lease is not preempted for reclaim before it has run this long (no thrashing)."""
    projects: tuple[str, ...] = ()
    """Only these projects may use the class (empty: every project)."""


DEFAULT_CLASSES: Final = (
    PriorityClass("inference", 200, preemptible=False, in_quota_only=True),
    PriorityClass("train", 100),
    PriorityClass("best-effort", 0, min_runtime_s=0.0),
)
DEFAULT_PRIORITY: Final = "train"


@dataclass(frozen=True, slots=True)
class PriorityClasses:
    """The configured classes by name, and the one a request without a class gets."""

    by_name: Mapping[str, PriorityClass]
    default: str = DEFAULT_PRIORITY

    @classmethod
    def of(cls, classes: Iterable[PriorityClass], default: str = DEFAULT_PRIORITY) -> PriorityClasses:
        """Index `classes`; `default` must be one of them."""
        by_name = {c.name: c for c in classes}
        if default not in by_name:
            raise ValueError(f"default priority class {default!r} is not one of {', '.join(sorted(by_name))}")
        return cls(by_name, default)

    def get(self, name: str) -> PriorityClass:
        """The class called `name` ("" means the default); KeyError for an unknown one."""
        return self.by_name[name or self.default]

    def names(self) -> list[str]:
        """Class names, highest value first."""
        return [c.name for c in sorted(self.by_name.values(), key=lambda c: -c.value)]


STANDARD: Final = PriorityClasses.of(DEFAULT_CLASSES)

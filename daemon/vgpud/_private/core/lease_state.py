"""The lease state machine (DESIGN.md): which transitions are legal, and nothing else."""

from __future__ import annotations

from typing import Final

from vgpud._private.core.model import LeaseState

_ENDINGS: Final = frozenset({LeaseState.RELEASED, LeaseState.REVOKED, LeaseState.EXPIRED})

ALLOWED: Final[dict[LeaseState, frozenset[LeaseState]]] = {
    LeaseState.PENDING: frozenset({LeaseState.GRANTED}) | _ENDINGS,
    LeaseState.GRANTED: frozenset({LeaseState.RESIZING, LeaseState.PREEMPTING}) | _ENDINGS,
    LeaseState.RESIZING: frozenset({LeaseState.GRANTED, LeaseState.PREEMPTING}) | _ENDINGS,
    LeaseState.PREEMPTING: frozenset({LeaseState.SUSPENDED}) | _ENDINGS,
    LeaseState.SUSPENDED: frozenset({LeaseState.GRANTED}) | _ENDINGS,
    LeaseState.RELEASED: frozenset(),
    LeaseState.REVOKED: frozenset(),
    LeaseState.EXPIRED: frozenset(),
}


class IllegalTransitionError(ValueError):
    """A caller tried to move a lease along an edge the state machine does not have."""


def check_transition(current: LeaseState, target: LeaseState) -> None:
    """Raise IllegalTransitionError unless `current -> target` is an edge of the machine."""
    if target not in ALLOWED[current]:
        raise IllegalTransitionError(f"lease cannot go from {current.value} to {target.value}")

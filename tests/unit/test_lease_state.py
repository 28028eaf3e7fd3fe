import itertools

import pytest

from vgpud._private.core.lease_state import ALLOWED, IllegalTransitionError, check_transition
from vgpud._private.core.model import LeaseState


def test_documented_path_is_allowed() -> None:
    path = [
        LeaseState.PENDING,
        LeaseState.GRANTED,
        LeaseState.RESIZING,
        LeaseState.PREEMPTING,
        LeaseState.SUSPENDED,
        LeaseState.GRANTED,
        LeaseState.RELEASED,
    ]
    for current, target in itertools.pairwise(path):
        check_transition(current, target)


@pytest.mark.parametrize("end", [LeaseState.RELEASED, LeaseState.REVOKED, LeaseState.EXPIRED])
def test_terminal_states_are_final(end: LeaseState) -> None:
    assert end.ended
    for target in LeaseState:
        with pytest.raises(IllegalTransitionError):
            check_transition(end, target)


def test_suspended_cannot_jump_to_preempting() -> None:
    with pytest.raises(IllegalTransitionError, match="suspended to preempting"):
        check_transition(LeaseState.SUSPENDED, LeaseState.PREEMPTING)


def test_every_state_has_an_entry() -> None:
    assert set(ALLOWED) == set(LeaseState)

"""Owners take turns in the serving order, and a waiter hears its position only when its own place changed."""

from __future__ import annotations

import asyncio
from typing import Any

from vgpud._private.core.fair_share import Capacity
from vgpud._private.core.model import Isolation, ShapeRequest
from vgpud._private.core.queue_order import Fairness, Waiting, serving_order
from vgpud._private.queueing.positions import PositionBoard

SHAPE = ShapeRequest(Isolation.SHARED, 1 << 30, 100)


def _fairness() -> Fairness:
    return Fairness({}, {}, Capacity(8000, 8 << 40), now=1000.0)


def _waiting(lease_id: str, owner: str, since: float, priority: int = 0) -> Waiting:
    return Waiting(lease_id, SHAPE, "", span=False, wait=True, priority=priority, since=since, owner=owner)


def test_a_newcomer_is_served_before_a_flooders_second_request() -> None:
    flood = [_waiting(f"a{i}", "alice", since=float(i)) for i in range(5)]
    order = serving_order([*flood, _waiting("b0", "bob", since=10.0)], fairness=None)
    assert [w.lease_id for w in order] == ["a0", "a1", "a2", "a3", "a4", "b0"]  # no fairness: plain arrival
    order = serving_order([*flood, _waiting("b0", "bob", since=10.0)], _fairness())
    assert [w.lease_id for w in order] == ["a0", "b0", "a1", "a2", "a3", "a4"]


def test_one_owner_keeps_class_then_age_order() -> None:
    entries = [_waiting("late-high", "a", 5.0, priority=10), _waiting("early", "a", 1.0), _waiting("mid", "a", 2.0)]
    assert [w.lease_id for w in serving_order(entries, _fairness())] == ["late-high", "early", "mid"]


class _View:
    def __init__(self) -> None:
        self.generation = 0

    def leader(self) -> object:
        return "node"

    async def wait_changed(self, generation: int, timeout: float | None = None) -> bool:
        await asyncio.sleep(3600)
        return False


def test_a_waiter_hears_only_changes_and_at_most_once_per_interval() -> None:
    now = [100.0]
    order = [["x", "me"]]
    view: Any = _View()
    board = PositionBoard(view, lambda: (order[0], 0.0), dict, interval=1.0, clock=lambda: now[0])

    async def scenario() -> list[object]:
        watch = board.watch("me")
        board._positions = board.rank()
        first = board.take(watch)
        again = board.take(watch)
        order[0] = ["me"]  # the request ahead left
        board._positions = board.rank()
        too_soon = board.take(watch)
        now[0] += 1.0
        later = board.take(watch)
        board.unwatch(watch)
        return [first, again, too_soon, later]

    first, again, too_soon, later = asyncio.run(scenario())
    assert getattr(first, "position", None) == 2
    assert again is None  # nothing changed
    assert too_soon is None  # changed, but within the interval
    assert getattr(later, "position", None) == 1
    assert board.messages == 2

"""PlacementSource: the daemon's FGD mix follows the pool's recent requests, rebuilt only when due."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from vgpud._private.core.fragmentation import FragmentationGradient
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import GpuRecord, Isolation, LeaseState, Owner, ShapeRequest
from vgpud._private.core.placement_mix import PlacementName
from vgpud._private.core.queued import QueuedRequest
from vgpud._private.placement_source import PlacementSource
from vgpud._private.pool_view import PoolView, Queued, Versioned

GIB = 1 << 30


def lease(lease_id: str, milli: int, at: float, state: LeaseState = LeaseState.GRANTED) -> LeaseRecord:
    request = ShapeRequest(Isolation.SHARED, milli * 80 * GIB // 1000, milli)
    return LeaseRecord(lease_id, "", state, "n1", "", "", Owner(), request, (), at, 30, 0)


@dataclass
class FakeView:
    """What PlacementSource reads of a PoolView."""

    live: list[LeaseRecord] = field(default_factory=list)
    ended: list[LeaseRecord] = field(default_factory=list)
    waiting: list[LeaseRecord] = field(default_factory=list)
    generation: int = 0

    def live_leases(self) -> list[Versioned[LeaseRecord]]:
        return [Versioned(lease, 1) for lease in self.live]

    def ended_leases(self) -> list[Versioned[LeaseRecord]]:
        return [Versioned(lease, 1) for lease in self.ended]

    def queue(self) -> list[Queued]:
        return [Queued(QueuedRequest(lease, "", span=False, wait=True), 1, 1, 0) for lease in self.waiting]

    def gpus(self) -> dict[str, GpuRecord]:
        return {"g": GpuRecord("g", "n1", 0, "H100", "H100", 80 * GIB, 132, False, False, "sim")}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def source(
    view: FakeView, name: PlacementName = "fgd", window: int = 10, refresh_s: float = 5.0
) -> tuple[PlacementSource, Clock]:
    clock = Clock()
    return PlacementSource(cast(PoolView, view), name, window=window, refresh_s=refresh_s, clock=clock), clock


def shares(placement: PlacementSource) -> dict[int, float]:
    assert placement.mix is not None
    return {c.milli: round(c.weight, 3) for c in placement.mix.classes}


def test_best_fit_never_builds_a_mix() -> None:
    placement, _ = source(FakeView(live=[lease("a", 500, 1)]), name="best-fit")
    assert placement() is None
    assert placement.mix is None


def test_fgd_is_best_fit_until_the_pool_has_seen_a_request() -> None:
    view = FakeView()
    placement, clock = source(view)
    assert placement() is None
    view.live.append(lease("a", 500, 1))
    view.generation += 1
    clock.now += 5
    assert isinstance(placement(), FragmentationGradient)
    assert shares(placement) == {500: 1.0}


def test_the_mix_is_rebuilt_only_when_the_pool_changed_and_refresh_s_passed() -> None:
    view = FakeView(live=[lease("a", 500, 1)])
    placement, clock = source(view)
    first = placement()
    view.live.append(lease("b", 250, 2))
    assert placement() is first  # the view has not changed (same generation)
    view.generation += 1
    clock.now += 4.9
    assert placement() is first  # changed, but rebuilt less than refresh_s ago
    clock.now += 0.1
    assert placement() is not first
    assert shares(placement) == {250: 0.5, 500: 0.5}


def test_an_unchanged_mix_keeps_its_policy_and_what_it_memoised() -> None:
    view = FakeView(live=[lease("a", 500, 1)])
    placement, clock = source(view)
    first = placement()
    view.generation += 1
    clock.now += 10
    assert placement() is first


def test_the_window_keeps_the_newest_requests_live_ended_and_waiting_each_once() -> None:
    pending = lease("w", 100, 5, LeaseState.PENDING)
    view = FakeView(
        live=[lease("old", 900, 1), lease("new", 500, 4), pending],
        ended=[lease("gone", 250, 3)],
        waiting=[pending],  # a waiting request's pending lease is live too: it counts once
    )
    placement, _ = source(view, window=3)
    placement()
    assert shares(placement) == {100: 0.333, 250: 0.333, 500: 0.333}

"""The pure limit checks every holdings-raising write makes (core/project_limits.py)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.model import Isolation, LeaseState, Owner, ShapeRequest
from vgpud._private.core.project_limits import (
    at_minimum,
    compute_growth_cap,
    fits,
    held_by,
    limited,
    raises_holdings,
    room,
    slices_within,
)
from vgpud._private.core.projects import Quota, Usage

GiB = 1024**3


def lease(lease_id: str, *milli: int, project: str = "vision", state: LeaseState = LeaseState.GRANTED) -> LeaseRecord:
    slices = tuple(SliceRecord("n1", f"GPU-{i}", i, "h100-80gb", Isolation.SHARED, GiB, m) for i, m in enumerate(milli))
    return LeaseRecord(
        id=lease_id,
        token_sha256="",
        state=state,
        node="n1",
        project=project,
        priority="",
        owner=Owner(),
        request=ShapeRequest(Isolation.SHARED, GiB, min(milli, default=100)),
        slices=slices,
        created_at=0.0,
        ttl_seconds=30,
        liveness_lease=0,
    )


def test_only_a_quota_with_a_limit_is_checked() -> None:
    assert not limited(None)
    assert not limited(Quota("vision", deserved_milli=1000))
    assert limited(Quota("vision", limit_milli=1000))
    assert limited(Quota("vision", limit_memory_bytes=GiB))


def test_holdings_count_the_projects_holding_leases_only() -> None:
    leases = [
        lease("a", 300, 300),
        lease("b", 200, project="nlp"),
        lease("c", 500, state=LeaseState.SUSPENDED),
        lease("d", 100, state=LeaseState.PREEMPTING),
        lease("e", 400, state=LeaseState.RELEASED),
    ]
    assert held_by("vision", leases) == Usage(700, 3 * GiB)
    assert held_by("nlp", leases) == Usage(200, GiB)
    assert held_by("default", [lease("f", 100, project="")]) == Usage(100, GiB)


def test_only_writes_that_hold_more_are_raises() -> None:
    granted = lease("a", 300)
    assert raises_holdings(None, granted)
    assert not raises_holdings(granted, granted)
    assert not raises_holdings(granted, replace(granted, idle_since=5.0))
    assert not raises_holdings(granted, replace(granted, state=LeaseState.PREEMPTING))
    assert not raises_holdings(granted, replace(granted, state=LeaseState.RELEASED))
    suspended = replace(granted, state=LeaseState.SUSPENDED, slices=())
    assert raises_holdings(suspended, granted)  # a resume
    assert raises_holdings(granted, lease("a", 300, 100))  # a count growth
    assert raises_holdings(granted, lease("a", 500))  # a compute growth
    bigger = replace(granted, slices=(replace(granted.slices[0], memory_bytes=2 * GiB),))
    assert raises_holdings(granted, bigger)


def test_room_is_unbounded_where_the_quota_sets_no_limit_and_never_negative() -> None:
    left = room(Usage(700, 5 * GiB), Quota("vision", limit_milli=1000))
    assert left.milli == 300
    assert fits(Usage(300, 10**15), left)
    assert not fits(Usage(301, 0), left)
    assert room(Usage(1200, 0), Quota("vision", limit_milli=1000)).milli == 0
    by_memory = room(Usage(10_000, 3 * GiB), Quota("vision", limit_memory_bytes=4 * GiB))
    assert by_memory.memory_bytes == GiB
    assert fits(Usage(10**9, GiB), by_memory)


def test_an_elastic_request_at_its_minimum_is_no_longer_elastic() -> None:
    elastic = ShapeRequest(Isolation.SHARED, GiB, 250, count=2, compute_milli_max=1000, count_max=4)
    minimum = at_minimum(elastic)
    assert not minimum.elastic
    assert (minimum.compute_milli, minimum.count, minimum.memory_bytes) == (250, 2, GiB)


def test_compute_growth_stops_at_the_limit() -> None:
    assert compute_growth_cap(1000, [250, 250], Usage(300, 0)) == 400  # two slices share 300 milli of room
    assert compute_growth_cap(1000, [250], Usage(10_000, 0)) == 1000
    assert compute_growth_cap(200, [250], Usage(0, 0)) == 200  # a shrink is left alone
    assert compute_growth_cap(1000, [250, 250], Usage(0, 0)) == 250  # no room: no growth


@given(
    shares=st.lists(st.integers(1, 1000), min_size=1, max_size=8),
    target=st.integers(1, 1000),
    left=st.integers(0, 8000),
)
def test_compute_growth_never_shrinks_and_a_growth_fits_the_room(shares: list[int], target: int, left: int) -> None:
    share = compute_growth_cap(target, shares, Usage(left, 0))
    if target <= max(shares):
        assert share == target
        return
    assert max(shares) <= share <= target
    if share > max(shares):
        assert sum(share - s for s in shares) <= left


@given(
    wanted=st.integers(0, 16),
    milli=st.integers(0, 1000),
    memory=st.integers(0, 80).map(lambda g: g * GiB),
    left_milli=st.integers(0, 20_000),
    left_memory=st.integers(0, 1000).map(lambda g: g * GiB),
)
def test_added_slices_fit_the_room_and_no_more_would(
    wanted: int, milli: int, memory: int, left_milli: int, left_memory: int
) -> None:
    one, left = Usage(milli, memory), Usage(left_milli, left_memory)
    count = slices_within(wanted, one, left)
    assert 0 <= count <= wanted
    assert fits(Usage(count * milli, count * memory), left)
    if count < wanted:
        assert not fits(Usage((count + 1) * milli, (count + 1) * memory), left)

"""The liveness lease pool: released leases' etcd leases are reused only while young and only once."""

from __future__ import annotations

import time

import pytest

from vgpud._private.grants.liveness_leases import LivenessLeases


class GrantCounter:
    """Just the part of the Store the pool uses: numbered grants."""

    def __init__(self) -> None:
        self.granted: list[int] = []

    async def grant(self, ttl: int, *, timeout: float) -> int:
        self.granted.append(1000 + len(self.granted))
        return self.granted[-1]


def pool(store: GrantCounter, ttl: int = 40) -> LivenessLeases:
    return LivenessLeases(store, ttl=ttl, timeout=1.0)  # type: ignore[arg-type]  # a stand-in for the Store


async def test_a_released_young_lease_binds_the_next_grant_instead_of_a_new_grant() -> None:
    store = GrantCounter()
    leases = pool(store)
    first = await leases.take(40)
    assert leases.give_back(first, 40) is True
    assert await leases.take(40) == first
    assert store.granted == [first], "the second grant cost etcd nothing"


async def test_a_lease_is_given_back_at_most_once() -> None:
    leases = pool(GrantCounter())
    first = await leases.take(40)
    assert leases.give_back(first, 40) is True
    assert leases.give_back(first, 40) is False, "two new grants must never share one liveness lease"
    assert await leases.take(40) == first
    assert await leases.take(40) != first


async def test_old_unknown_or_other_ttl_leases_are_left_to_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    store = GrantCounter()
    leases = pool(store)
    other_ttl = await leases.take(90)
    assert leases.give_back(other_ttl, 90) is False
    assert leases.give_back(4242, 40) is False, "granted elsewhere and never refreshed here: age unknown"
    old = await leases.take(40)
    later = time.monotonic() + leases.max_age + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert leases.give_back(old, 40) is False
    leases.refreshed(4343, 40, later - 1)
    assert leases.give_back(4343, 40) is True, "a heartbeat just reset it: young again"
    assert await leases.take(40) == 4343


async def test_given_back_leases_are_handed_out_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    leases = pool(GrantCounter())
    now = time.monotonic()
    for lease, age in ((7, 2), (5, 5), (6, 3)):
        leases.refreshed(lease, 40, now - age)
        assert leases.give_back(lease, 40)
    assert [await leases.take(40) for _ in range(3)] == [5, 6, 7]

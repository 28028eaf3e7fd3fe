"""gpu_otherwise_idle: when a lease's "burst" runtime may use the whole GPU."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vgpud._private.core.burst import gpu_otherwise_idle
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.model import Isolation, LeaseState, Owner, ShapeRequest

GIB = 1 << 30


def lease(lease_id: str, *gpus: str, isolation: Isolation = Isolation.SHARED) -> LeaseRecord:
    slices = tuple(SliceRecord("n1", g, i, "H100", isolation, 8 * GIB, 250) for i, g in enumerate(gpus))
    request = ShapeRequest(isolation, 8 * GIB, 250, count=max(len(gpus), 1))
    return LeaseRecord(lease_id, "", LeaseState.GRANTED, "n1", "", "", Owner(), request, slices, 1.0, 30, 0)


def idle(
    me: LeaseRecord,
    others: list[LeaseRecord],
    measured: dict[str, float | None] | None = None,
    below: float = 0.05,
) -> bool:
    everyone = {x.id: x for x in [me, *others]}

    def holders(gpu: str) -> list[str]:
        return [x.id for x in everyone.values() if any(s.gpu_uuid == gpu for s in x.slices)]

    return gpu_otherwise_idle(me, holders, everyone.get, (measured or {}).get, below)


def test_alone_on_its_gpu_the_gpu_is_otherwise_idle() -> None:
    assert idle(lease("a", "g0"), [lease("b", "g1")])


def test_a_neighbour_nothing_measured_counts_as_busy() -> None:
    assert not idle(lease("a", "g0"), [lease("b", "g0")])


@pytest.mark.parametrize(("used", "expected"), [(0.0, True), (0.049, True), (0.05, False), (0.9, False)])
def test_a_measured_neighbour_is_idle_only_under_the_threshold(used: float, expected: bool) -> None:
    assert idle(lease("a", "g0"), [lease("b", "g0")], {"b": used}) is expected


def test_a_neighbour_flagged_idle_or_gone_leaves_the_gpu_idle() -> None:
    flagged = replace(lease("b", "g0"), idle_since=5.0)
    assert idle(lease("a", "g0"), [flagged], {"b": 0.8})
    me = lease("a", "g0")
    assert gpu_otherwise_idle(me, lambda _gpu: ["a", "ghost"], {"a": me}.get, lambda _id: None, 0.05)


def test_every_gpu_of_a_several_gpu_lease_must_be_otherwise_idle() -> None:
    me = lease("a", "g0", "g1")
    assert idle(me, [lease("b", "g1")], {"b": 0.0})
    assert not idle(me, [lease("b", "g1")], {"b": 0.5})


def test_only_shared_slices_burst() -> None:
    assert not idle(lease("a", "g0", isolation=Isolation.MIG), [])
    assert not idle(lease("a", "g0", isolation=Isolation.WHOLE), [])
    assert not idle(replace(lease("a"), slices=()), [])

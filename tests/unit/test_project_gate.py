"""The project guard in the group commit: limits checked against the batch, the guard key, the rebuild's view.

A small in-memory store stands in for etcd (revisions and mod-revision compares only), so the race the
guard exists for can be staged step by step: another daemon's grant lands in the store, this daemon's
view has not seen it yet, and this daemon's own grant must not pass the limit with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import cast

import pytest

from tests.unit.test_project_limits import lease
from vgpu._private import reasons
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import GpuMode, GpuRecord, GpuState, Isolation, LeaseState, ShapeRequest
from vgpud._private.core.placement import Placement, Unplaceable
from vgpud._private.core.projects import Quota
from vgpud._private.core.queue_order import place_local
from vgpud._private.core.slice_views import GpuView
from vgpud._private.grants.project_gate import within_limit
from vgpud._private.grants.write_batch import Overlay, WriteBatcher
from vgpud._private.pool_view import PoolView
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys
from vgpud._private.store.base import Compare, KeyValue, ModRevisionIs, Op, Put, Store, TxnResult

GiB = 1024**3
KEYS = Keys("gate-test")
GATE = KEYS.projgate("vision")


class MemoryStore:
    """Keys with mod revisions and guarded transactions: the part of etcd the group commit uses."""

    def __init__(self) -> None:
        self.kvs: dict[str, KeyValue] = {}
        self.revision = 1
        self.reread: asyncio.Event = asyncio.Event()

    def apply(self, ops: Sequence[Op]) -> int:
        self.revision += 1
        for op in ops:
            assert isinstance(op, Put)
            self.kvs[op.key] = KeyValue(op.key, op.value, self.revision, self.revision, op.lease)
        return self.revision

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = (), *, timeout: float
    ) -> TxnResult:
        for c in compares:
            assert isinstance(c, ModRevisionIs)
            kv = self.kvs.get(c.key)
            if (kv.mod_revision if kv else 0) != c.revision:
                return TxnResult(False, self.revision)
        return TxnResult(True, self.apply(success))

    async def get(self, key: str, *, timeout: float) -> KeyValue | None:
        if key == GATE:
            self.reread.set()
        return self.kvs.get(key)


def view_of(store: MemoryStore) -> PoolView:
    """A pool view that has seen everything in `store` so far (as after a listing)."""
    view = PoolView(cast("Store", store), KEYS, timeout=5)
    for kv in store.kvs.values():
        view.apply_committed([Put(kv.key, kv.value, kv.lease)], kv.mod_revision)
    return view


def seeded(*leases: LeaseRecord, limit: int = 1000) -> MemoryStore:
    store = MemoryStore()
    ops: list[Op] = [Put(KEYS.project("vision"), Quota("vision", limit_milli=limit).to_json())]
    ops += [Put(KEYS.lease(r.id), r.to_json()) for r in leases]
    store.apply(ops)
    return store


def test_a_project_without_a_limit_gets_no_guard() -> None:
    overlay = Overlay(view_of(seeded()), KEYS)
    overlay.put_lease(lease("a", 900, project="nlp"), new=True)
    overlay.put_lease(lease("b", 900, project=""), new=True)
    assert not overlay.gates
    assert {c.key for c in overlay.compares()} == {KEYS.lease("a"), KEYS.lease("b")}


def test_a_grant_guards_the_project_key_as_the_view_has_it_and_rewrites_it_once() -> None:
    store = seeded()
    absent = Overlay(view_of(store), KEYS)
    absent.put_lease(lease("a", 100), new=True)
    assert ModRevisionIs(GATE, 0) in absent.compares()  # never written yet: it must still be absent
    store.apply([Put(GATE, b"")])
    overlay = Overlay(view_of(store), KEYS)
    overlay.put_lease(lease("a", 100), new=True)
    overlay.put_lease(lease("b", 100), new=True)
    assert ModRevisionIs(GATE, store.revision) in overlay.compares()
    assert [op.key for op in overlay.ops()].count(GATE) == 1


def test_two_grants_of_one_batch_count_each_other() -> None:
    overlay = Overlay(view_of(seeded(lease("held", 300))), KEYS)
    overlay.put_lease(lease("a", 400), new=True)
    with pytest.raises(Refusal) as refused:
        overlay.put_lease(lease("b", 400), new=True)
    assert refused.value.reason == reasons.OVER_QUOTA
    assert "vision" in refused.value.message
    assert "limit" in refused.value.message


def test_writes_that_do_not_raise_pass_even_over_a_lowered_limit() -> None:
    held = lease("held", 800)
    view = view_of(seeded(held, limit=500))
    overlay = Overlay(view, KEYS)
    overlay.put_lease(replace(held, idle_since=3.0))
    overlay.put_lease(replace(held, state=LeaseState.PREEMPTING))
    assert not overlay.gates
    with pytest.raises(Refusal):
        overlay.put_lease(lease("a", 100), new=True)
    released = Overlay(view, KEYS)
    released.put_lease(held.ended_as(LeaseState.RELEASED, "RELEASED", "", 1.0))
    assert not released.gates
    released.put_lease(lease("a", 100), new=True)  # in the same batch as the release: counted without it
    assert released.gates == {GATE}


def test_an_elastic_request_whose_maximum_would_cross_the_limit_is_placed_at_its_minimum() -> None:
    record = GpuRecord(
        uuid="GPU-0",
        node="n1",
        index=0,
        model="h100-80gb",
        name="NVIDIA H100 80GB HBM3",
        memory_bytes=80 * GiB,
        sm_count=132,
        mig_capable=True,
        mig_enabled=False,
        backend="sim",
    )
    gpus = [GpuView(record, GpuState(GpuMode.SHARED))]
    overlay = Overlay(view_of(seeded(lease("held", 600))), KEYS)
    elastic = ShapeRequest(Isolation.SHARED, GiB, 250, compute_milli_max=1000)

    def place(request: ShapeRequest) -> Placement | Unplaceable:
        return place_local(request, gpus, "new")

    placed = within_limit(overlay, "vision", elastic, place)
    assert isinstance(placed, Placement)
    assert [c.compute_milli for _, c in placed.assignments] == [250]
    unlimited = within_limit(overlay, "nlp", elastic, place)
    assert isinstance(unlimited, Placement)
    assert [c.compute_milli for _, c in unlimited.assignments] == [1000]


async def test_after_losing_the_race_the_rebuild_waits_for_the_view_and_sees_the_other_grant() -> None:
    store = seeded(lease("held", 600))
    store.apply([Put(GATE, b"")])
    view = view_of(store)
    writer = WriteBatcher(cast("Store", store), KEYS, view, timeout=5)
    # Another daemon grants 300 in the project: in etcd now, not yet in this daemon's view.
    other = lease("other", 300)
    theirs = [Put(KEYS.lease("other"), other.to_json()), Put(GATE, b"")]
    their_revision = store.apply(theirs)

    def grant(overlay: Overlay) -> LeaseRecord:
        mine = lease("mine", 300)
        overlay.put_lease(mine, new=True)
        return mine

    attempt = asyncio.create_task(writer.submit(grant))
    async with asyncio.timeout(5):
        await store.reread.wait()  # the compare on the guard failed and the batch re-read the keys
    for _ in range(20):
        await asyncio.sleep(0)
    assert not attempt.done(), "the rebuild must wait for the view to hold the other grant"
    view.apply_committed(theirs, their_revision)  # what the watch delivers: the key with the lease beside it
    with pytest.raises(Refusal) as refused:
        await attempt
    assert refused.value.reason == reasons.OVER_QUOTA
    assert KEYS.lease("mine") not in store.kvs


async def test_a_view_that_never_catches_up_fails_the_batch_instead_of_guessing() -> None:
    store = seeded()
    view = view_of(store)
    writer = WriteBatcher(cast("Store", store), KEYS, view, timeout=0.2)
    store.apply([Put(GATE, b"")])  # moved by someone this view never hears of

    with pytest.raises(Refusal) as refused:
        await writer.submit(lambda overlay: overlay.put_lease(lease("mine", 100), new=True))
    assert refused.value.reason == reasons.CONFLICT
    assert KEYS.lease("mine") not in store.kvs

"""The allocator in-process against a real etcd: placement rules that need the daemon's inputs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from vgpu._private import reasons
from vgpud._private.core.model import GpuRecord, Isolation, LeaseState, NodeRecord, ShapeRequest
from vgpud._private.grants.allocator import AcquireSpec, Allocator
from vgpud._private.pool_view import PoolView
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys, register_gpus
from vgpud._private.store.base import Put
from vgpud._private.store.etcd_store import EtcdStore

GiB = 1024**3
KEYS = Keys("alloc-test")


def gpu(index: int) -> GpuRecord:
    return GpuRecord(
        uuid=f"GPU-{index:08d}-0000-0000-0000-000000000000",
        node="n1",
        index=index,
        model="h100-80gb",
        name="NVIDIA H100 80GB HBM3",
        memory_bytes=80 * GiB,
        sm_count=132,
        mig_capable=True,
        mig_enabled=False,
        backend="sim",
    )


@pytest.fixture
async def view(etcd_store: EtcdStore) -> AsyncIterator[PoolView]:
    await register_gpus(etcd_store, KEYS, "n1", [gpu(0), gpu(1)], timeout=5)
    node = NodeRecord("n1", "unix:///x", "0", 0.0, "sim", 2)
    await etcd_store.txn([], [Put(KEYS.node("n1"), node.to_json())], timeout=5)
    pool_view = PoolView(etcd_store, KEYS, timeout=5)
    task = asyncio.create_task(pool_view.run())
    await pool_view.wait_ready()
    yield pool_view
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def spec(memory: int = 10 * GiB) -> AcquireSpec:
    return AcquireSpec(shape=ShapeRequest(Isolation.SHARED, memory, 100), node="n1", ttl_seconds=30)


async def test_unhealthy_gpus_take_no_new_work(etcd_store: EtcdStore, view: PoolView) -> None:
    sick = {gpu(0).uuid}
    allocator = Allocator(
        etcd_store, KEYS, view, timeout=5, history_ttl=60, default_ttl=30, healthy=lambda uuid: uuid not in sick
    )
    record, _ = await allocator.acquire(spec())
    assert [s.gpu_uuid for s in record.slices] == [gpu(1).uuid]
    sick.add(gpu(1).uuid)
    with pytest.raises(Refusal) as refused:
        await allocator.acquire(spec())
    assert refused.value.reason == reasons.NO_CAPACITY
    assert "unhealthy" in refused.value.message
    sick.clear()
    again, _ = await allocator.acquire(spec(75 * GiB))  # only the healed, empty GPU holds it
    assert [s.gpu_uuid for s in again.slices] == [gpu(0).uuid]


async def test_concurrent_grants_share_batches_without_overcommit(etcd_store: EtcdStore, view: PoolView) -> None:
    allocator = Allocator(etcd_store, KEYS, view, timeout=5, history_ttl=60, default_ttl=30)
    results = await asyncio.gather(*(allocator.acquire(spec(9 * GiB)) for _ in range(24)), return_exceptions=True)
    granted = [r[0] for r in results if not isinstance(r, BaseException)]
    refusals = [r for r in results if isinstance(r, Refusal)]
    assert len(granted) == 16  # 8 x 9 GiB fit on each 80 GiB GPU
    assert len(refusals) == 8
    assert {r.reason for r in refusals} == {reasons.NO_CAPACITY}
    snapshot = await etcd_store.get_prefix(KEYS.root + "gpustate/", timeout=5)
    from vgpud._private.core.model import GpuState

    claims = [c for kv in snapshot.kvs for c in GpuState.from_json(kv.value).claims]
    assert sorted(c.lease_id for c in claims) == sorted(r.id for r in granted)
    ended = await asyncio.gather(
        *(allocator.end(r.id, LeaseState.RELEASED, reasons.END_RELEASED, "done") for r in granted)
    )
    assert {e.state for e in ended} == {LeaseState.RELEASED}
    snapshot = await etcd_store.get_prefix(KEYS.root + "gpustate/", timeout=5)
    assert all(GpuState.from_json(kv.value).claims == () for kv in snapshot.kvs)


async def test_gpus_another_node_reports_unhealthy_take_no_new_work(etcd_store: EtcdStore, view: PoolView) -> None:
    """Remote health comes from the node record its daemon publishes, so the leader skips bad GPUs."""
    leader = Allocator(etcd_store, KEYS, view, timeout=5, history_ttl=60, default_ttl=30, local_node="elsewhere")
    sick = NodeRecord("n1", "unix:///x", "0", 0.0, "sim", 2, unhealthy=(gpu(0).uuid,))
    await etcd_store.txn([], [Put(KEYS.node("n1"), sick.to_json())], timeout=5)
    while (node := view.node("n1")) is None or not node.unhealthy:
        assert await view.wait_changed(view.generation, timeout=5)
    usable = {g.record.uuid: g.schedulable for g in leader.candidates("n1")}
    assert usable == {gpu(0).uuid: False, gpu(1).uuid: True}
    record, _ = await leader.acquire(spec(75 * GiB))
    assert [s.gpu_uuid for s in record.slices] == [gpu(1).uuid]
    with pytest.raises(Refusal) as refused:
        await leader.acquire(spec(75 * GiB))
    assert "unhealthy" in refused.value.message


async def test_a_released_lease_hands_its_liveness_lease_to_the_next_grant(
    etcd_store: EtcdStore, view: PoolView, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocator = Allocator(etcd_store, KEYS, view, timeout=5, history_ttl=60, default_ttl=30)
    liveness_grants: list[int] = []
    grant = etcd_store.grant

    async def counted(ttl: int, *, timeout: float) -> int:
        lease = await grant(ttl, timeout=timeout)
        if ttl == 30:
            liveness_grants.append(lease)
        return lease

    monkeypatch.setattr(etcd_store, "grant", counted)
    with pytest.raises(Refusal) as refused:
        await allocator.acquire(spec(100 * GiB))
    assert refused.value.reason == reasons.NEVER_FITS
    first, _ = await allocator.acquire(spec())
    assert liveness_grants == [first.liveness_lease], "the refused request's unused lease bound this grant"
    await allocator.end(first.id, LeaseState.RELEASED, reasons.END_RELEASED, "done")
    second, _ = await allocator.acquire(spec())
    assert second.liveness_lease == first.liveness_lease
    assert liveness_grants == [first.liveness_lease]
    assert await allocator.refresh(second) > 0, "the reused etcd lease is alive and now keeps the new grant"
    await allocator.end(second.id, LeaseState.EXPIRED, reasons.END_EXPIRED, "heartbeat came too late")
    third, _ = await allocator.acquire(spec())
    assert third.liveness_lease != second.liveness_lease, "only a client's release hands its lease on"
    assert liveness_grants == [first.liveness_lease, third.liveness_lease]

"""Many clients race for the last capacity of one GPU through two daemons on one etcd (invariant 1)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

import vgpu
from tests.integration.conftest import GiB
from tests.support import SharedEtcd
from vgpu.testing import LocalPool, local_pool
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import GpuState
from vgpud._private.registry import Keys


@pytest.fixture
def two_daemons(shared_etcd: SharedEtcd) -> Iterator[tuple[LocalPool, LocalPool]]:
    args = (*shared_etcd.args, "--node-name", "racer")
    with local_pool("h100-80gb:1", extra_args=args) as a, local_pool("h100-80gb:1", extra_args=args) as b:
        yield a, b


async def read_pool(etcd: SharedEtcd) -> tuple[dict[str, GpuState], dict[str, LeaseRecord]]:
    store = await etcd.connect()
    try:
        keys = Keys("default")
        states = await store.get_prefix(keys.root + "gpustate/", timeout=5)
        leases = await store.get_prefix(keys.root + "leases/", timeout=5)
        return (
            {kv.key.rsplit("/", 1)[1]: GpuState.from_json(kv.value) for kv in states.kvs},
            {kv.key.rsplit("/", 1)[1]: LeaseRecord.from_json(kv.value) for kv in leases.kvs},
        )
    finally:
        await store.close()


def test_two_daemons_never_overcommit_one_gpu(
    two_daemons: tuple[LocalPool, LocalPool], shared_etcd: SharedEtcd
) -> None:
    pools = [daemon.pool() for daemon in two_daemons]
    granted: list[vgpu.Lease] = []
    refused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def contend(i: int) -> None:
        start.wait()
        try:
            lease = pools[i % 2].acquire(memory="10GiB", compute=0.05, wait=False)
        except (vgpu.NoCapacityError, vgpu.ConflictError) as exc:
            with lock:
                refused.append(exc.reason)
        else:
            with lock:
                granted.append(lease)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        # 79.6 GiB holds exactly seven 10 GiB slices: no more (over-commit), no fewer (lost capacity).
        assert len(granted) == 7, (len(granted), refused)
        assert len(refused) == 17
        states, leases = asyncio.run(read_pool(shared_etcd))
        (state,) = states.values()
        assert state.memory_claimed == 70 * GiB
        assert {c.lease_id for c in state.claims} == {lease.id for lease in granted}
        assert {i for i, r in leases.items() if not r.state.ended} == {lease.id for lease in granted}
        for lease in granted[:3]:
            lease.release()
        states, _ = asyncio.run(read_pool(shared_etcd))
        assert next(iter(states.values())).memory_claimed == 40 * GiB
    finally:
        for pool in pools:
            pool.close()
    states, _ = asyncio.run(read_pool(shared_etcd))
    assert next(iter(states.values())).claims == ()

"""A project's limit holds exactly while two daemons grant for it at the same moment (issue 16, item 7).

Each daemon grants on its own node directly (the fast path) and the leader grants from the queue; both
decide on their own view of the pool. The proof reads etcd's own history afterwards: every revision from
the first race to the end is replayed, and the project's holdings at each one stay within the limit.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pytest

import vgpu
from tests.integration.conftest import vgpuctl, wait_until
from tests.support import SharedEtcd
from vgpu._private import reasons
from vgpu.testing import LocalPool, local_pool
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.projects import Usage, lease_usage, project_of
from vgpud._private.registry import Keys
from vgpud._private.store.base import EventType, Put

PROJECT = "capped"
LIMIT_MILLI = 1000
KEYS = Keys("default")


@pytest.fixture
def two_nodes(shared_etcd: SharedEtcd) -> Iterator[tuple[LocalPool, LocalPool]]:
    """Nodes a and b, two simulated H100s each (far more room than the limit), on one etcd."""
    args = shared_etcd.args
    with local_pool("h100-80gb:2", extra_args=args) as a, local_pool("h100-80gb:2", extra_args=args) as b:
        yield a, b


@dataclass
class Outcomes:
    """What a crowd of acquires got."""

    granted: list[vgpu.Lease] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """Reasons of the refusals (vgpu.VgpuError.reason)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def race(pools: list[vgpu.Pool], clients: int, compute: float, *, wait: bool) -> Outcomes:
    """`clients` acquires in PROJECT, alternating between the daemons, all let go by one barrier."""
    out = Outcomes()
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        start.wait()
        try:
            lease = pools[i % len(pools)].acquire(memory="1GiB", compute=compute, project=PROJECT, wait=wait)
        except vgpu.VgpuError as exc:
            with out.lock:
                out.refused.append(exc.reason)
        else:
            with out.lock:
                out.granted.append(lease)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def holds_nothing(daemon: LocalPool) -> bool:
    """Whether the project holds nothing as this daemon's view has it (vgpuctl quota get)."""
    answer = vgpuctl(daemon, "quota", "get", PROJECT, "--json", check=True)
    return int(json.loads(answer.stdout)["allocated_milli"]) == 0


def knows_project(daemon: LocalPool) -> bool:
    """Whether this daemon's view has the project's quota."""
    return vgpuctl(daemon, "quota", "get", PROJECT).returncode == 0


def set_limit(a: LocalPool, b: LocalPool) -> None:
    """Give PROJECT a hard limit and wait until both daemons know the project."""
    a.set_quota(PROJECT, deserved=0.5, limit=LIMIT_MILLI / 1000)
    for daemon in (a, b):
        wait_until(functools.partial(knows_project, daemon), what="the quota")


async def revision_now(etcd: SharedEtcd) -> int:
    """The store revision now (history from here on is replayed by peak_holdings)."""
    store = await etcd.connect()
    try:
        return (await store.get_prefix(KEYS.root + "leases/", timeout=5)).revision
    finally:
        await store.close()


async def peak_holdings(etcd: SharedEtcd, since: int) -> tuple[Usage, int]:
    """The most PROJECT held at any etcd revision after `since`, and how many such revisions there were.

    Replays etcd's history of the pool's keys (a watch from the first revision) up to a marker written
    now, applying all events of a revision before counting (one transaction may end a lease and grant
    another).
    """
    store = await etcd.connect()
    try:
        marker = KEYS.root + "test-replay-end"  # no key kind: every daemon's view ignores it
        end = (await store.txn([], [Put(marker, b"")], timeout=5)).revision
        leases: dict[str, LeaseRecord] = {}
        peak, revisions, current = Usage(), 0, 0
        async for event in store.watch_prefix(KEYS.root, start_revision=1):
            revision = event.kv.mod_revision
            if revision != current:  # every event of `current` is applied: count it
                if current > since:
                    used = held(leases.values())
                    peak = Usage(max(peak.milli, used.milli), max(peak.memory_bytes, used.memory_bytes))
                    revisions += 1
                current = revision
            if revision >= end:
                return peak, revisions
            if event.kv.key.startswith(KEYS.root + "leases/"):
                if event.type is EventType.PUT:
                    leases[event.kv.key] = LeaseRecord.from_json(event.kv.value)
                else:
                    leases.pop(event.kv.key, None)
        raise AssertionError("the watch ended before the marker")
    finally:
        await store.close()


def held(leases: Iterable[LeaseRecord]) -> Usage:
    """What PROJECT holds through `leases`."""
    total = Usage()
    for lease in leases:
        if project_of(lease) == PROJECT:
            total += lease_usage(lease)
    return total


def test_two_daemons_racing_never_take_a_project_past_its_limit(
    two_nodes: tuple[LocalPool, LocalPool], shared_etcd: SharedEtcd
) -> None:
    a, b = two_nodes
    set_limit(a, b)
    since = asyncio.run(revision_now(shared_etcd))
    pools = [a.pool(), b.pool()]
    try:
        for _ in range(3):
            # 24 fail-fast requests of 0.1 GPU, twelve through each daemon: the limit (1 GPU) takes ten.
            out = race(pools, 24, 0.1, wait=False)
            assert len(out.granted) * 100 <= LIMIT_MILLI, f"{len(out.granted)} x 0.1 GPU granted: past the limit"
            assert len(out.granted) == LIMIT_MILLI // 100, out.refused  # and not short of it either
            assert set(out.refused) == {reasons.OVER_QUOTA}, out.refused
            for lease in out.granted:
                lease.release()
            # Both views must count the releases before the next round, or they would refuse early.
            for daemon in (a, b):
                wait_until(functools.partial(holds_nothing, daemon), what="the releases")
    finally:
        for pool in pools:
            pool.close()
    peak, revisions = asyncio.run(peak_holdings(shared_etcd, since))
    assert revisions > 0
    assert peak.milli == LIMIT_MILLI, peak


def test_waiting_requests_and_fail_fast_ones_stay_within_the_limit(
    two_nodes: tuple[LocalPool, LocalPool], shared_etcd: SharedEtcd
) -> None:
    """Waiters are granted by the leader as leases end while fail-fast requests race them on both nodes."""
    a, b = two_nodes
    set_limit(a, b)
    since = asyncio.run(revision_now(shared_etcd))
    pools = [a.pool(), b.pool()]
    waiters_done = threading.Event()
    hammered = Outcomes()

    def hammer(pool: vgpu.Pool) -> None:
        while not waiters_done.is_set():
            try:
                lease = pool.acquire(memory="1GiB", compute=0.25, project=PROJECT, wait=False)
            except vgpu.VgpuError as exc:
                with hammered.lock:
                    hammered.refused.append(exc.reason)
            else:
                with hammered.lock:
                    hammered.granted.append(lease)
                lease.release()

    hammers = [threading.Thread(target=hammer, args=(pools[i % 2],)) for i in range(4)]
    try:
        for t in hammers:
            t.start()
        waiters = Outcomes()
        start = threading.Barrier(8)

        def waiter(i: int) -> None:
            start.wait()
            try:
                lease = pools[i % 2].acquire(memory="1GiB", compute=0.25, project=PROJECT, wait=True, timeout=60)
            except vgpu.VgpuError as exc:
                with waiters.lock:
                    waiters.refused.append(exc.reason)
            else:
                with waiters.lock:
                    waiters.granted.append(lease)
                lease.release()

        crowd = [threading.Thread(target=waiter, args=(i,)) for i in range(8)]
        for t in crowd:
            t.start()
        for t in crowd:
            t.join(120)
        waiters_done.set()
        for t in hammers:
            t.join(60)
    finally:
        waiters_done.set()
        for pool in pools:
            pool.close()
    assert not waiters.refused, waiters.refused
    assert len(waiters.granted) == 8
    assert set(hammered.refused) <= {reasons.OVER_QUOTA}, hammered.refused
    peak, revisions = asyncio.run(peak_holdings(shared_etcd, since))
    assert revisions > 0
    assert 0 < peak.milli <= LIMIT_MILLI, peak

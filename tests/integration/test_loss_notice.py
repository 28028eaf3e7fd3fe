"""A workload hears at once that its lease was revoked, evicted or expired (DESIGN.md target: within 1 s).

Leases here have a 60 s TTL, so heartbeats are 20 s apart: every wait below (5 s) is far shorter than a
heartbeat interval, and passes only when the lease's own event stream brings the news.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import vgpu
from tests.integration.conftest import Admin, GiB, vgpuctl
from tests.support import SharedEtcd
from vgpu.api.v1 import admin_pb2
from vgpu.testing import LocalPool, local_pool
from vgpud._private.registry import Keys

TTL = 60
"""Heartbeats every 20 s: a test that waits NOTICE for the loss fails if only the heartbeat hears of it."""
NOTICE = 5.0
"""How long a test waits for on_lost: generous against the 1 s target, far below a heartbeat interval."""


class Lost:
    """An on_lost callback that records each call (reason and thread) and can be waited for."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.threads: list[str] = []
        self.heard = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.threads.append(threading.current_thread().name)
        self.heard.set()

    def wait(self) -> bool:
        return self.heard.wait(NOTICE)


def evict(admin: Admin, lease_id: str) -> None:
    admin.admin.EvictLease(admin_pb2.EvictLeaseRequest(lease_id=lease_id, reason="node maintenance"), timeout=10)


def evicted_in_block(
    lease: vgpu.Lease, admin: Admin, lost: Lost, *, heard_first: bool = True, body_error: Exception | None = None
) -> None:
    """A `with` block over `lease` that has the lease evicted in its body (and waits to hear of it)."""
    with lease:
        evict(admin, lease.id)
        if heard_first:
            assert lost.wait()
        if body_error is not None:
            raise body_error


# --- threads (vgpu.Pool) -------------------------------------------------------------------------------


def test_an_eviction_is_heard_at_once_and_on_lost_runs_once(daemon: LocalPool, admin: Admin) -> None:
    lost = Lost()
    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1, ttl=TTL, on_lost=lost)
        vgpuctl(daemon, "evict", lease.id, "--reason", "node maintenance", check=True)
        assert lost.wait(), "on_lost did not run: the loss was not pushed to the lease"
        assert lease.lost
        assert lease.status == "revoked"
        assert "node maintenance" in (lease.lost_reason or "")
        assert lease.end_reason
        lease.release()  # quiet after a loss; stops (and joins) the lease's threads
        assert lease.released
    assert lost.reasons == [lease.lost_reason]
    assert admin.allocated_memory() == 0


def test_an_expiry_is_heard_at_once(shared_etcd: SharedEtcd) -> None:
    """The lease's liveness etcd lease goes away (as when its TTL lapses): the daemon expires it and says so."""

    async def revoke_liveness(lease_id: str) -> None:
        store = await shared_etcd.connect()
        try:
            alive = await store.get(Keys("default").alive(lease_id), timeout=5)
            assert alive is not None
            assert alive.lease
            await store.revoke(alive.lease, timeout=5)
        finally:
            await store.close()

    lost = Lost()
    with local_pool("h100-80gb:1", extra_args=shared_etcd.args) as daemon, daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1, ttl=TTL, on_lost=lost)
        asyncio.run(revoke_liveness(lease.id))
        assert lost.wait(), "on_lost did not run: the expiry was not pushed to the lease"
        assert lease.status == "expired"
        assert lease.lost
        lease.release()
    assert len(lost.reasons) == 1


@pytest.mark.parametrize("heard_first", [True, False], ids=["heard-in-body", "ends-right-after-evict"])
def test_a_with_block_that_outlives_its_lease_raises(daemon: LocalPool, admin: Admin, heard_first: bool) -> None:
    """Whether the notice came during the body or the block ends before it could, the block does not pass."""
    lost = Lost()
    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1, ttl=TTL, on_lost=lost)
        with pytest.raises(vgpu.LeaseLostError, match="revoked") as caught:
            evicted_in_block(lease, admin, lost, heard_first=heard_first)
        assert lease.released
        assert lease.status == "revoked"
        assert caught.value.reason == lease.end_reason
        assert lost.reasons == [lease.lost_reason]  # on_lost ran once, even when only the release heard of it
    assert admin.allocated_memory() == 0


def test_raise_on_lost_false_leaves_the_check_to_the_code(daemon: LocalPool, admin: Admin) -> None:
    lost = Lost()
    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1, ttl=TTL, raise_on_lost=False, on_lost=lost)
        assert lease.raise_on_lost is False
        evicted_in_block(lease, admin, lost)
        assert lease.lost
        assert lease.released
        other = pool.acquire(memory="1GiB", compute=0.1, ttl=TTL)
        other.raise_on_lost = False  # settable on the lease too
        with other:
            evict(admin, other.id)
        assert other.lost


def test_the_body_exception_is_kept_over_the_loss(daemon: LocalPool, admin: Admin) -> None:
    lost = Lost()
    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1, ttl=TTL, on_lost=lost)
        with pytest.raises(ValueError, match="the body's own"):
            evicted_in_block(lease, admin, lost, body_error=ValueError("the body's own error"))
        assert lease.lost
        assert lease.released


def test_the_stream_resumes_after_a_daemon_restart(daemon: LocalPool) -> None:
    lost = Lost()
    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1, ttl=TTL, on_lost=lost)
        daemon.restart()
        admin = Admin(daemon.endpoint)
        try:
            evict(admin, lease.id)
        finally:
            admin.close()
        assert lost.heard.wait(2 * NOTICE), "the lease's stream did not come back after the restart"
        assert lost.threads == [f"vgpu-follow-{lease.id}"]  # the resumed stream, not a heartbeat, heard it
        assert lease.status == "revoked"
        lease.release()


# --- asyncio (vgpu.AsyncPool) --------------------------------------------------------------------------


async def evict_async(admin: Admin, lease_id: str) -> None:
    await asyncio.to_thread(evict, admin, lease_id)


async def evicted_in_async_block(
    lease: vgpu.AsyncLease,
    admin: Admin,
    heard: asyncio.Event | None,
    body_error: Exception | None = None,
) -> None:
    """An `async with` block over `lease` that has the lease evicted in its body (and waits for `heard`)."""
    async with lease:
        await evict_async(admin, lease.id)
        if heard is not None:
            await asyncio.wait_for(heard.wait(), NOTICE)
        if body_error is not None:
            raise body_error


async def test_async_an_eviction_is_heard_at_once_by_a_coroutine_on_lost(daemon: LocalPool, admin: Admin) -> None:
    reasons: list[str] = []
    heard = asyncio.Event()

    async def on_lost(reason: str) -> None:
        reasons.append(reason)
        heard.set()

    async with daemon.async_pool() as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1, ttl=TTL, on_lost=on_lost)
        await evict_async(admin, lease.id)
        await asyncio.wait_for(heard.wait(), NOTICE)
        assert lease.lost
        assert lease.status == "revoked"
        assert "node maintenance" in (lease.lost_reason or "")
        await lease.release()
    assert reasons == [lease.lost_reason]
    assert admin.allocated_memory() == 0


@pytest.mark.parametrize("heard_first", [True, False], ids=["heard-in-body", "ends-right-after-evict"])
async def test_async_with_block_that_outlives_its_lease_raises(
    daemon: LocalPool, admin: Admin, heard_first: bool
) -> None:
    reasons: list[str] = []
    heard = asyncio.Event()

    def on_lost(reason: str) -> None:  # a plain function is called on the loop
        reasons.append(reason)
        heard.set()

    async with daemon.async_pool() as pool:
        lease = await pool.acquire(memory="1GiB", compute=0.1, ttl=TTL, on_lost=on_lost)
        with pytest.raises(vgpu.LeaseLostError, match="revoked"):
            await evicted_in_async_block(lease, admin, heard if heard_first else None)
        assert lease.released
        assert lease.status == "revoked"
        assert reasons == [lease.lost_reason]
    assert admin.allocated_memory() == 0


async def test_async_raise_on_lost_false_and_the_body_exception_kept(daemon: LocalPool, admin: Admin) -> None:
    async with daemon.async_pool() as pool:
        heard = asyncio.Event()
        lease = await pool.acquire(
            memory="1GiB", compute=0.1, ttl=TTL, raise_on_lost=False, on_lost=lambda _r: heard.set()
        )
        await evicted_in_async_block(lease, admin, heard)
        assert lease.lost
        assert lease.released

        heard = asyncio.Event()
        failing = await pool.acquire(memory="1GiB", compute=0.1, ttl=TTL, on_lost=lambda _r: heard.set())
        with pytest.raises(ValueError, match="the body's own"):
            await evicted_in_async_block(failing, admin, heard, ValueError("the body's own error"))
        assert failing.lost
        assert failing.released
    assert admin.allocated_memory() == 0


async def test_async_a_lease_with_no_loss_leaves_its_block_quietly(daemon: LocalPool, admin: Admin) -> None:
    async with daemon.async_pool() as pool:
        async with await pool.acquire(memory="2GiB", compute=0.1, ttl=TTL) as lease:
            assert not lease.preempt_requested  # opens the lease's stream now rather than after its start delay
            assert admin.allocated_memory() == 2 * GiB
        assert lease.released
        assert not lease.lost
        assert lease.status == "released"

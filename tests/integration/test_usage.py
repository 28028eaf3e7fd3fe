"""Allocation vs. use: the ledger's hourly buckets in a real etcd, and `vgpuctl top`/`report` against a daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from google.protobuf import duration_pb2

from tests.integration.conftest import Admin, GiB, config_args, vgpuctl, wait_until
from vgpu._private.channels import authenticated_channel
from vgpu.api.v1 import admin_pb2, workload_pb2, workload_pb2_grpc
from vgpu.testing import LocalPool
from vgpud._private.config_accounting import AccountingConfig
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.model import Isolation, LeaseState, Owner, ShapeRequest
from vgpud._private.core.usage_tally import HourBucket
from vgpud._private.node_watchdog import LeaseUse
from vgpud._private.pool_view import PoolView, Versioned
from vgpud._private.registry import Keys
from vgpud._private.store.etcd_store import EtcdStore
from vgpud._private.usage_ledger import UsageLedger

EXIT_USAGE = 2


# -- the ledger against etcd ---------------------------------------------------------------------------
class _Leases:
    """The one PoolView method the ledger reads."""

    def __init__(self, *leases: LeaseRecord) -> None:
        self.leases = list(leases)

    def live_leases(self) -> list[Versioned[LeaseRecord]]:
        return [Versioned(lease, 1) for lease in self.leases]


def _lease(lease_id: str, node: str = "n1") -> LeaseRecord:
    return LeaseRecord(
        id=lease_id,
        token_sha256="ab" * 32,
        state=LeaseState.GRANTED,
        node=node,
        project="vision",
        priority="train",
        owner=Owner("ada"),
        request=ShapeRequest(Isolation.SHARED, 10 * GiB, 500),
        slices=(SliceRecord(node, "GPU-a", 0, "h100-80gb", Isolation.SHARED, 10 * GiB, 500),),
        created_at=1.0,
        ttl_seconds=30,
        liveness_lease=0,
    )


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _ledger(store: EtcdStore, clock: _Clock, uses: dict[str, LeaseUse], *leases: LeaseRecord) -> UsageLedger:
    return UsageLedger(
        config=AccountingConfig(sample_interval_s=1, flush_interval_s=10, retention_days=2),
        store=store,
        keys=Keys("test"),
        view=cast(PoolView, _Leases(*leases)),  # a stub: the ledger only lists live leases
        node="n1",
        uses=lambda: uses,
        timeout=5.0,
        clock=clock,
    )


async def _stored(store: EtcdStore, hour: int) -> HourBucket | None:
    kv = await store.get(Keys("test").usage(hour, "n1"), timeout=5.0)
    return None if kv is None else HourBucket.from_json(kv.value)


async def test_the_ledger_writes_its_hour_and_a_restart_carries_on(etcd_store: EtcdStore) -> None:
    hour = 1_000 * 3600
    clock = _Clock(hour + 10.0)
    uses = {"l1": LeaseUse("l1", "vision", frozenset({4}), 2 * GiB, 0.5, 10 * GiB)}
    ledger = _ledger(etcd_store, clock, uses, _lease("l1"), _lease("elsewhere", node="n2"))
    clock.now += 5
    await ledger.tick()  # a sample; not yet time to flush
    assert await _stored(etcd_store, hour) is None
    clock.now += 5
    await ledger.tick()
    stored = await _stored(etcd_store, hour)
    assert stored is not None
    assert list(stored.leases) == ["l1"]  # the other node's lease is not counted here
    assert stored.leases["l1"].allocated_gpu_s == pytest.approx(5.0)
    assert stored.leases["l1"].used_gpu_s == pytest.approx(5.0)

    restarted = _ledger(etcd_store, clock, uses, _lease("l1"))
    await restarted.load()
    clock.now += 2
    restarted.sample(clock.now)
    await restarted.flush()
    again = await _stored(etcd_store, hour)
    assert again is not None
    assert again.leases["l1"].held_s == pytest.approx(12.0)  # 10 s before the restart, 2 after


async def test_the_ledger_closes_an_hour_and_prunes_past_the_retention(etcd_store: EtcdStore) -> None:
    keys = Keys("test")
    old_hour = 500 * 3600
    await etcd_store.txn([], [], timeout=5.0)
    stale = HourBucket("n9", old_hour)
    from vgpud._private.store.base import Put

    await etcd_store.txn([], [Put(keys.usage(old_hour, "n9"), stale.to_json())], timeout=5.0)
    clock = _Clock(old_hour + 3 * 24 * 3600 + 3590.0)  # three days later, 10 s before the hour ends
    ledger = _ledger(etcd_store, clock, {}, _lease("l1"))
    hour = ledger.bucket.hour
    clock.now += 5
    await ledger.tick()  # the first tick of an hour prunes: the retention is 2 days
    assert await etcd_store.get(keys.usage(old_hour, "n9"), timeout=5.0) is None
    clock.now += 10  # into the next hour: the old one is written a last time, a new one starts
    await ledger.tick()
    closed = await _stored(etcd_store, hour)
    assert closed is not None
    assert closed.leases["l1"].held_s == pytest.approx(5.0)
    assert ledger.bucket.hour == hour + 3600
    assert ledger.bucket.leases["l1"].held_s == pytest.approx(10.0)
    assert ledger.bucket.leases["l1"].utilization_gpus is None  # no watchdog measurement


async def test_an_unreadable_stored_bucket_is_started_afresh(etcd_store: EtcdStore) -> None:
    from vgpud._private.store.base import Put

    clock = _Clock(2_000 * 3600 + 1.0)
    await etcd_store.txn([], [Put(Keys("test").usage(2_000 * 3600, "n1"), b"garbage")], timeout=5.0)
    ledger = _ledger(etcd_store, clock, {}, _lease("l1"))
    await ledger.load()
    assert ledger.bucket.leases == {}


# -- top and report against a daemon -------------------------------------------------------------------
CONFIG = """
[watchdog]
interval_s = 0.2

[accounting]
sample_interval_s = 0.2
flush_interval_s = 0.2
"""


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[LocalPool]:
    with LocalPool("h100-80gb:2", ttl=30, extra_args=config_args(tmp_path, CONFIG)) as local:
        yield local


@pytest.fixture
def admin(pool: LocalPool) -> Iterator[Admin]:
    stubs = Admin(pool.endpoint)
    yield stubs
    stubs.close()


def _report(admin: Admin, since_s: int = 3600) -> admin_pb2.GetUsageReportResponse:
    request = admin_pb2.GetUsageReportRequest(since=duration_pb2.Duration(seconds=since_s))
    answer: admin_pb2.GetUsageReportResponse = admin.admin.GetUsageReport(request, timeout=10)
    return answer


def test_top_and_report_show_budget_against_measured_use(pool: LocalPool, admin: Admin) -> None:
    with pool.pool() as client:
        measured = client.acquire(memory="10GiB", compute=0.5, project="", wait=False)
        whole = client.acquire(gpus=1, wait=False)
        channel = authenticated_channel(pool.endpoint)
        workload = workload_pb2_grpc.WorkloadServiceStub(channel)
        usage = workload_pb2.Usage(reported=True, memory_bytes=4 * GiB, utilization_milli=250)
        workload.Heartbeat(
            workload_pb2.HeartbeatRequest(lease_id=measured.id, token=measured.token, usage=usage), timeout=10
        )

        def rows() -> dict[str, admin_pb2.LeaseUsage] | None:
            answer = admin.admin.ListLeaseUsage(admin_pb2.ListLeaseUsageRequest(), timeout=10)
            found = {u.lease_id: u for u in answer.leases}
            ready = measured.id in found and found[measured.id].memory_measured and whole.id in found
            return found if ready and found[whole.id].HasField("sampled_at") else None

        found = wait_until(rows, what="both leases sampled")
        mine = found[measured.id]
        assert (mine.memory_used_bytes, mine.memory_budget_bytes) == (4 * GiB, 10 * GiB)
        assert (mine.used_milli, mine.compute_milli) == (250, 500)
        assert not found[whole.id].memory_measured  # nothing runs on it: no use is made up
        assert not found[whole.id].utilization_measured
        assert found[whole.id].compute_milli == 1000

        def measured_report() -> admin_pb2.GetUsageReportResponse | None:
            answer = _report(admin)
            return answer if answer.projects and answer.projects[0].used_gpu_hours > 0 else None

        report = wait_until(measured_report, what="a report with measured use")
        (project,) = report.projects
        assert project.leases == 2
        assert project.allocated_gpu_hours > project.measured_allocated_gpu_hours > 0
        assert project.used_gpu_hours == pytest.approx(project.measured_allocated_gpu_hours / 2, rel=0.05)
        assert 0 < project.measured_lease_hours < project.lease_hours
        assert report.nodes == 1

        top = vgpuctl(pool, "top")
        assert top.returncode == 0, top.stderr
        line = next(row for row in top.stdout.splitlines() if row.startswith(measured.id))
        assert "4GiB/10GiB" in line
        assert "40%" in line  # memory
        assert "0.25/0.50" in line
        assert "50%" in line  # compute used of the share
        listed = json.loads(vgpuctl(pool, "top", "--json", check=True).stdout)
        assert {row["lease_id"] for row in listed} == {measured.id, whole.id}
        printed = vgpuctl(pool, "report", "--since", "2h")
        assert printed.returncode == 0, printed.stderr
        assert "node(s) reporting" in printed.stdout
        as_json = json.loads(vgpuctl(pool, "report", "--since", "1d", "--json", check=True).stdout)
        assert as_json["projects"][0]["leases"] == 2
        measured.release()
        whole.release()
        channel.close()


def test_usage_bad_input_gets_clear_errors(pool: LocalPool, admin: Admin) -> None:
    too_long = vgpuctl(pool, "report", "--since", "400d")
    assert too_long.returncode == EXIT_USAGE
    assert "since 400d is longer than the 35-day retention" in too_long.stderr
    zero = vgpuctl(pool, "report", "--since", "0s")
    assert zero.returncode == EXIT_USAGE
    assert "above 0" in zero.stderr
    fast = vgpuctl(pool, "top", "--watch", "--interval", "0.1s")
    assert fast.returncode == EXIT_USAGE
    assert "at least 0.5s" in fast.stderr
    both = vgpuctl(pool, "top", "--watch", "--json")
    assert both.returncode == EXIT_USAGE
    with pytest.raises(grpc.RpcError) as refused:
        _report(admin, since_s=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as bad_project:
        admin.admin.ListLeaseUsage(admin_pb2.ListLeaseUsageRequest(project="no spaces"), timeout=10)
    assert bad_project.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    empty = vgpuctl(pool, "top")
    assert empty.returncode == 0
    assert "No leases holding slices found." in empty.stderr

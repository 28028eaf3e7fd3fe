"""Metrics that add up: two daemons on one etcd, both /metrics scraped over HTTP, checked against the admin API.

Every sample names its node; pool-wide series come from the leader alone and equal what `quota list`,
`leases` and `queue` say; each node exports its own GPUs only; used memory and utilisation follow the
runtime's reports on simulated GPUs; the standard process collectors are there.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.integration.conftest import Admin, wait_until
from tests.support import SharedEtcd, free_port
from vgpu.api.v1 import admin_pb2, types_pb2, workload_pb2
from vgpu.testing import LocalPool, local_pool
from vgpud._private.registry import Keys

GiB = 1024**3
POOL_WIDE = frozenset(
    {
        "vgpu_leases",
        "vgpu_queue_length",
        "vgpu_queue_oldest_wait_seconds",
        "vgpu_project_compute_allocated_gpus",
        "vgpu_project_memory_allocated_bytes",
        "vgpu_project_leases",
        "vgpu_project_waiting_requests",
    }
)
MEASURED = frozenset({"vgpu_gpu_memory_used_bytes", "vgpu_gpu_utilization_ratio"})
PER_GPU = MEASURED | {
    "vgpu_gpu_memory_capacity_bytes",
    "vgpu_gpu_memory_allocated_bytes",
    "vgpu_gpu_compute_allocated_ratio",
}


@dataclass
class Scraped:
    """One daemon and its metrics port."""

    daemon: LocalPool
    port: int

    def samples(self) -> list[Sample]:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        return [s for family in text_string_to_metric_families(body) for s in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        want = {"node": self.daemon.node_name, **labels}
        found = [s.value for s in self.samples() if s.name == name and s.labels == want]
        return found[0] if found else None


@pytest.fixture
def scraped(shared_etcd: SharedEtcd) -> Iterator[tuple[Scraped, Scraped]]:
    """Nodes a and b (two simulated H100s each) on one etcd, each serving /metrics."""
    ports = free_port(), free_port()
    args = [*shared_etcd.args, "--metrics-host", "127.0.0.1"]
    with (
        local_pool("h100-80gb:2", extra_args=[*args, "--metrics-port", str(ports[0])], ttl=5) as a,
        local_pool("h100-80gb:2", extra_args=[*args, "--metrics-port", str(ports[1])], ttl=5) as b,
    ):
        yield Scraped(a, ports[0]), Scraped(b, ports[1])


def leader_of(etcd: SharedEtcd) -> str:
    raw = asyncio.run(etcd.read(Keys("default").leader))
    assert raw, "no pool leader"
    return raw.decode()


def test_two_daemons_export_series_that_add_up(scraped: tuple[Scraped, Scraped], shared_etcd: SharedEtcd) -> None:
    a, b = scraped
    for project in ("audio", "nlp", "vision"):
        a.daemon.set_quota(project, deserved=1)
    admin = Admin(a.daemon.endpoint)
    with a.daemon.pool() as pool:
        vision = pool.acquire(memory="20GiB", compute=0.5, project="vision", node=a.daemon.node_name)
        nlp = pool.acquire(gpus=1, project="nlp", node=b.daemon.node_name)
        vision.report_usage(utilization=0.5, memory="4GiB")
        (gpu_a,) = {s.gpu_uuid for s in vision.slices}
        two_whole = types_pb2.ResourceRequest(isolation=types_pb2.ISOLATION_WHOLE, count=2)  # a has one free
        waiter = admin.workload.Acquire(
            workload_pb2.AcquireRequest(resources=two_whole, project="audio", wait=True), timeout=60
        )
        try:
            assert next(waiter).HasField("queued")
            wait_until(
                lambda: a.value("vgpu_gpu_memory_used_bytes", gpu=gpu_a, model="h100-80gb") == 4 * GiB,
                timeout=30,
                what="the runtime's report in vgpu_gpu_memory_used_bytes",
            )
            leader = leader_of(shared_etcd)
            by_node = {s.daemon.node_name: s for s in scraped}
            wait_until(
                lambda: (
                    by_node[leader].value("vgpu_leases", state="granted") == 2
                    and by_node[leader].value("vgpu_queue_length") == 1
                ),
                what="both grants and the waiter in the leader's series",
            )
            scrapes = {s.daemon.node_name: s.samples() for s in scraped}
            gpus = admin.gpus()
            check_node_labels(scrapes)
            check_pool_wide(scrapes, leader, admin)
            check_per_gpu(scrapes, gpus)

            # Used memory and utilisation from the runtime's report (simulated GPUs), per GPU and project.
            assert a.value("vgpu_gpu_utilization_ratio", gpu=gpu_a, model="h100-80gb") == 0.5
            assert a.value("vgpu_project_memory_used_bytes", project="vision") == 4 * GiB
            assert a.value("vgpu_project_compute_used_gpus", project="vision") == 0.5
            assert a.value("vgpu_lease_memory_used_bytes", lease=vision.id, project="vision") == 4 * GiB
            idle = next(g.uuid for g in gpus if g.node == a.daemon.node_name and g.uuid != gpu_a)
            assert a.value("vgpu_gpu_memory_used_bytes", gpu=idle, model="h100-80gb") == 0
            (gpu_b,) = {s.gpu_uuid for s in nlp.slices}
            assert b.value("vgpu_gpu_memory_used_bytes", gpu=gpu_b, model="h100-80gb") is None  # held, unreported
            assert (by_node[leader].value("vgpu_queue_oldest_wait_seconds") or 0) > 0
        finally:
            waiter.cancel()
            vision.release()
            nlp.release()
            admin.close()


def check_node_labels(scrapes: dict[str, list[Sample]]) -> None:
    """Every sample says which node exported it; the standard process collectors are there."""
    for node, samples in scrapes.items():
        assert samples
        assert {s.labels.get("node") for s in samples} == {node}
        names = {s.name for s in samples}
        assert names >= {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"}


def check_pool_wide(scrapes: dict[str, list[Sample]], leader: str, admin: Admin) -> None:
    """Pool-wide series on the leader alone (absent, not zero, elsewhere), equal to what the admin API says."""
    for node, samples in scrapes.items():
        names = {s.name for s in samples}
        (flag,) = [s.value for s in samples if s.name == "vgpu_leader"]
        assert (flag == 1) == (node == leader)
        assert names >= POOL_WIDE if node == leader else not POOL_WIDE & names
    quotas = admin.admin.ListQuotas(admin_pb2.ListQuotasRequest(), timeout=10)
    pool_series = [s for s in scrapes[leader] if s.name in POOL_WIDE]
    for status in quotas.projects:
        project = status.quota.project
        got = {s.name: s.value for s in pool_series if s.labels.get("project") == project}
        assert got["vgpu_project_compute_allocated_gpus"] == status.allocated_milli / 1000, project
        assert got["vgpu_project_memory_allocated_bytes"] == status.allocated_memory_bytes, project
        assert got["vgpu_project_leases"] == status.leases, project
        assert got["vgpu_project_waiting_requests"] == status.waiting, project
    exported = {s.labels["project"] for s in pool_series if "project" in s.labels}
    assert exported == {p.quota.project for p in quotas.projects} == {"audio", "nlp", "vision"}
    assert [p.waiting for p in quotas.projects if p.quota.project == "audio"] == [1]
    leases = admin.admin.ListAllLeases(admin_pb2.ListAllLeasesRequest(), timeout=10).leases
    by_state = {s.labels["state"]: s.value for s in pool_series if s.name == "vgpu_leases"}
    assert by_state["granted"] == sum(1 for lease in leases if lease.state == types_pb2.LEASE_STATE_GRANTED) == 2
    queue = admin.admin.ListQueue(admin_pb2.ListQueueRequest(), timeout=10).entries
    assert [s.value for s in pool_series if s.name == "vgpu_queue_length"] == [len(queue)] == [1]


def check_per_gpu(scrapes: dict[str, list[Sample]], gpus: list[types_pb2.Gpu]) -> None:
    """Each node exports its own GPUs only; sums over the nodes equal the admin API's."""
    for node, samples in scrapes.items():
        own = {g.uuid for g in gpus if g.node == node}
        for name in PER_GPU:
            exported = {s.labels["gpu"] for s in samples if s.name == name}
            assert exported <= own, (node, name)  # used series: only GPUs whose use is known
            assert exported == own or name in MEASURED, (node, name)
    every = [s for samples in scrapes.values() for s in samples]
    allocated = sum(s.value for s in every if s.name == "vgpu_gpu_memory_allocated_bytes")
    assert allocated == sum(g.allocated.memory_bytes for g in gpus) > 20 * GiB
    capacity = sum(s.value for s in every if s.name == "vgpu_gpu_memory_capacity_bytes")
    assert capacity == sum(g.memory_bytes for g in gpus)
    compute = sum(s.value for s in every if s.name == "vgpu_gpu_compute_allocated_ratio")
    assert compute == sum(g.allocated.compute_milli for g in gpus) / 1000 == 1.5

"""Fixtures for tests that drive real vgpud processes (each on its own embedded etcd, ports and dirs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from google.protobuf import duration_pb2

from tests.etcd_cluster import EtcdCluster
from tests.support import SharedEtcd
from vgpu._private.channels import authenticated_channel
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, types_pb2, workload_pb2, workload_pb2_grpc
from vgpu.testing import LocalPool, local_pool

T = TypeVar("T")
GiB = 1024**3


def wait_until(probe: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; for state only visible by asking (no event)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def config_args(directory: Path, toml: str) -> list[str]:
    """vgpud flags that make it read `toml` as its config file (written under `directory`)."""
    config = directory / "vgpud.toml"
    config.write_text(toml)
    return ["--config", str(config)]


@pytest.fixture
def daemon() -> Iterator[LocalPool]:
    """A vgpud with two simulated H100-80GB on its own embedded etcd."""
    with local_pool("h100-80gb:2") as pool:
        yield pool


@pytest.fixture
def small_daemon() -> Iterator[LocalPool]:
    """A vgpud with one simulated H100-80GB and a short lease TTL (expiry tests)."""
    with local_pool("h100-80gb:1", ttl=3) as pool:
        yield pool


class Admin:
    """Raw AdminService/WorkloadService stubs against one daemon, for checks below the SDK."""

    def __init__(self, endpoint: str) -> None:
        self.channel = authenticated_channel(endpoint)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.workload = workload_pb2_grpc.WorkloadServiceStub(self.channel)

    def gpus(self) -> list[types_pb2.Gpu]:
        return list(self.admin.ListGpus(admin_pb2.ListGpusRequest(), timeout=10).gpus)

    def allocated_memory(self) -> int:
        return sum(g.allocated.memory_bytes for g in self.gpus())

    def get(self, lease_id: str, token: str) -> types_pb2.Lease:
        request = workload_pb2.GetLeaseRequest(lease_id=lease_id, token=token)
        return self.workload.GetLease(request, timeout=10).lease

    def preempt(self, lease_id: str, grace_s: int = 30) -> types_pb2.Lease:
        request = admin_pb2.PreemptLeaseRequest(
            lease_id=lease_id, reason="test", grace=duration_pb2.Duration(seconds=grace_s)
        )
        return self.admin.PreemptLease(request, timeout=10).lease

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def admin(daemon: LocalPool) -> Iterator[Admin]:
    stubs = Admin(daemon.endpoint)
    yield stubs
    stubs.close()


def vgpuctl(pool: LocalPool, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real vgpuctl console entry against `pool`."""
    return subprocess.run(
        [sys.executable, "-m", "vgpuctl", "--endpoint", pool.endpoint, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedEtcd]:
    """One etcd on loopback that several daemons of a test share (`.args` are the vgpud flags for it)."""
    from vgpud._private.store.embedded_etcd import EmbeddedEtcd

    etcd = EmbeddedEtcd(tmp_path_factory.mktemp("etcd"))
    etcd.start()
    try:
        yield SharedEtcd.of(etcd)
    finally:
        etcd.stop()


@pytest.fixture
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd cluster on loopback (plain http); tests may kill, stop and restart members.

    Function-scoped because tests disturb it.
    """
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-cluster"), size=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()

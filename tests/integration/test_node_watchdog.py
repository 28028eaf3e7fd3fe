"""The node watchdog against a real daemon: processes of revoked leases are stopped, memory budgets held.

Workloads run as subprocesses (watchdog_worker.py, or a plain sleeper started with a lease's environment):
the test process itself never holds a lease the watchdog could stop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.conftest import Admin, GiB, config_args, wait_until
from vgpu._private import reasons
from vgpu.api.v1 import types_pb2, workload_pb2
from vgpu.testing import LocalPool

WORKER = Path(__file__).with_name("watchdog_worker.py")
CONFIG = """
[watchdog]
interval_s = 0.2
over_budget_grace_s = 1.5
kill_grace_s = 1

[priority_classes.train]
value = 100
preempt_grace_s = 30
min_runtime_s = 0
"""
SLEEPER = "import signal, sys; {ignore}print('ready', flush=True); signal.pause()"


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[LocalPool]:
    with LocalPool("h100-80gb:1", ttl=3, extra_args=config_args(tmp_path, CONFIG)) as local:
        yield local


@pytest.fixture
def stubs(pool: LocalPool) -> Iterator[Admin]:
    s = Admin(pool.endpoint)
    yield s
    s.close()


class Worker:
    """watchdog_worker.py as a subprocess; killed at the end of the test whatever happened."""

    def __init__(self, pool: LocalPool, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), pool.endpoint, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.lease_id: str = hello["lease"]
        self.token: str = hello["token"]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


def test_missed_preemption_stops_the_lease_holder(pool: LocalPool, stubs: Admin, workers: list[Worker]) -> None:
    worker = Worker(pool)
    workers.append(worker)
    # A heartbeat (every TTL/3 = 1 s) carries the identity socket before the 3 s deadline passes.
    stubs.preempt(worker.lease_id, grace_s=3)
    code = worker.proc.wait(timeout=30)
    assert code == -signal.SIGTERM
    ended = stubs.get(worker.lease_id, worker.token)
    assert ended.state == types_pb2.LEASE_STATE_REVOKED
    assert ended.end_reason == reasons.END_PREEMPT_MISSED


def test_a_process_that_ignores_sigterm_is_killed(pool: LocalPool, stubs: Admin, workers: list[Worker]) -> None:
    worker = Worker(pool, "--ignore-term")
    workers.append(worker)
    stubs.preempt(worker.lease_id, grace_s=3)
    assert worker.proc.wait(timeout=30) == -signal.SIGKILL


def test_processes_started_with_the_lease_environment_are_stopped(pool: LocalPool, stubs: Admin) -> None:
    request = workload_pb2.AcquireRequest(
        resources=types_pb2.ResourceRequest(memory_bytes=10 * GiB, compute_milli=500), wait=False
    )
    lease = list(stubs.workload.Acquire(request, timeout=30))[-1].lease
    assert lease.env["VGPU_LEASE_ID"] == lease.id
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SLEEPER.format(ignore=ignore)], env={**lease.env}, stdout=subprocess.PIPE, text=True
        )
        for ignore in ("", "signal.signal(signal.SIGTERM, signal.SIG_IGN); ")
    ]
    bystander = subprocess.Popen([sys.executable, "-c", SLEEPER.format(ignore="")], stdout=subprocess.PIPE, text=True)
    try:
        for child in (*children, bystander):
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        stubs.preempt(lease.id, grace_s=1)
        assert children[0].wait(timeout=30) == -signal.SIGTERM
        assert children[1].wait(timeout=30) == -signal.SIGKILL
        assert bystander.poll() is None  # not the lease's: untouched
    finally:
        for child in (*children, bystander):
            child.kill()
            child.wait(timeout=10)
            if child.stdout is not None:
                child.stdout.close()


def test_memory_over_budget_warns_then_revokes_and_stops(pool: LocalPool, stubs: Admin, workers: list[Worker]) -> None:
    worker = Worker(pool)
    workers.append(worker)
    worker.send(f"usage {12 * GiB}")  # the lease's budget is 10 GiB
    warned = wait_until(lambda: stubs.get(worker.lease_id, worker.token).warning, what="a warning")
    assert "use 12GiB of GPU memory, over its budget of 10GiB" in warned
    assert worker.proc.wait(timeout=30) == -signal.SIGTERM
    ended = stubs.get(worker.lease_id, worker.token)
    assert ended.state == types_pb2.LEASE_STATE_REVOKED
    assert ended.end_reason == reasons.END_OVER_BUDGET


def test_coming_back_under_budget_clears_the_warning(pool: LocalPool, stubs: Admin, workers: list[Worker]) -> None:
    worker = Worker(pool)
    workers.append(worker)
    events = stubs.workload.WatchLease(
        workload_pb2.WatchLeaseRequest(lease_id=worker.lease_id, token=worker.token), timeout=60
    )
    worker.send(f"usage {12 * GiB}")
    kinds = []
    for event in events:
        kinds.append(event.type)
        if event.type == workload_pb2.LEASE_EVENT_TYPE_WARNING and event.lease.warning:
            worker.send(f"usage {8 * GiB}")
        elif event.type == workload_pb2.LEASE_EVENT_TYPE_WARNING:
            break
    events.cancel()
    assert kinds.count(workload_pb2.LEASE_EVENT_TYPE_WARNING) == 2
    lease = stubs.get(worker.lease_id, worker.token)
    assert lease.state == types_pb2.LEASE_STATE_GRANTED
    assert not lease.warning
    worker.send("release")
    assert worker.proc.poll() is None


def test_a_bad_identity_socket_is_refused(pool: LocalPool, stubs: Admin, workers: list[Worker]) -> None:
    worker = Worker(pool)
    workers.append(worker)
    request = workload_pb2.HeartbeatRequest(
        lease_id=worker.lease_id, token=worker.token, usage=workload_pb2.Usage(identity_socket="dbus-session")
    )
    with pytest.raises(grpc.RpcError) as caught:
        stubs.workload.Heartbeat(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "identity_socket" in (caught.value.details() or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another uid")
def test_a_process_of_another_uid_is_never_signalled(pool: LocalPool, stubs: Admin) -> None:
    """Defence in depth: even a process carrying the lease's environment is left alone if another user runs it."""
    request = workload_pb2.AcquireRequest(
        resources=types_pb2.ResourceRequest(memory_bytes=10 * GiB, compute_milli=500), wait=False
    )
    lease = list(stubs.workload.Acquire(request, timeout=30))[-1].lease
    assert lease.owner.uid == 0  # root acquired it: only root's processes may be stopped
    own = subprocess.Popen(
        [sys.executable, "-c", SLEEPER.format(ignore="")], env={**lease.env}, stdout=subprocess.PIPE, text=True
    )
    other = subprocess.Popen(["sleep", "300"], env={**lease.env}, user=65534, group=65534, extra_groups=[])
    try:
        assert own.stdout is not None
        assert own.stdout.readline().strip() == "ready"
        stubs.preempt(lease.id, grace_s=1)
        assert own.wait(timeout=30) == -signal.SIGTERM
        wait_until(
            lambda: f'"pid": {other.pid}' in pool.log_tail(200) and "not stopping a process" in pool.log_tail(200),
            what="the watchdog's refusal to signal uid 65534",
        )
        assert other.poll() is None
    finally:
        for child in (own, other):
            child.kill()
            child.wait(timeout=10)
        if own.stdout is not None:
            own.stdout.close()

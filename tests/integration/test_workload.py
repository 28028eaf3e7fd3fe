"""The workload door end to end: SDK -> real vgpud -> real etcd."""

from __future__ import annotations

import threading

import pytest

import vgpu
from tests.integration.conftest import Admin, GiB
from vgpu.testing import LocalPool


def test_acquire_gives_environment_and_release_frees(daemon: LocalPool, admin: Admin) -> None:
    with daemon.pool() as pool:
        lease = pool.acquire(memory="20GiB", compute=0.5)
        assert lease.status == "granted"
        assert len(lease.slices) == 1
        gpu_uuid = lease.slices[0].gpu_uuid
        assert lease.env["CUDA_VISIBLE_DEVICES"] == gpu_uuid
        assert gpu_uuid.startswith("GPU-")
        assert lease.env["VGPU_LEASE"].startswith(lease.id + ".")
        assert lease.env["VGPU_MEMORY_LIMIT"] == str(20 * GiB)
        assert lease.env["VGPU_COMPUTE_MILLI"] == "500"
        assert admin.allocated_memory() == 20 * GiB
        lease.release()
        assert admin.allocated_memory() == 0
        lease.release()  # idempotent


def test_best_fit_packs_before_spreading(daemon: LocalPool) -> None:
    with daemon.pool() as pool:
        first = pool.acquire(memory="30GiB", compute=0.3)
        second = pool.acquire(memory="30GiB", compute=0.3)
        assert first.slices[0].gpu_uuid == second.slices[0].gpu_uuid
        whole = pool.acquire(memory="60GiB", compute=0.9)
        assert whole.slices[0].gpu_uuid != first.slices[0].gpu_uuid


def test_count_is_all_or_nothing_on_distinct_gpus(daemon: LocalPool, admin: Admin) -> None:
    with daemon.pool() as pool:
        pair = pool.acquire(memory="10GiB", compute=0.1, count=2)
        assert len({s.gpu_uuid for s in pair.slices}) == 2
        assert pair.env["CUDA_VISIBLE_DEVICES"].count(",") == 1
        with pytest.raises(vgpu.NeverFitsError, match="eligible GPUs"):
            pool.acquire(memory="10GiB", compute=0.1, count=3, wait=False)
        assert admin.allocated_memory() == 20 * GiB


def test_fail_fast_says_what_would_fit(daemon: LocalPool) -> None:
    with daemon.pool() as pool:
        pool.acquire(memory="70GiB", compute=0.9)
        pool.acquire(memory="70GiB", compute=0.9)
        with pytest.raises(vgpu.NoCapacityError, match=r"largest free slice: 9\.\dGiB and 0\.1 GPU") as info:
            pool.acquire(memory="20GiB", compute=0.5, wait=False)
        assert info.value.reason == "NO_CAPACITY"


def test_larger_than_any_gpu_is_refused_at_once(daemon: LocalPool) -> None:
    with daemon.pool() as pool, pytest.raises(vgpu.NeverFitsError, match="largest shared GPU"):
        pool.acquire(memory="100GiB", compute=0.5)


def test_unknown_model_lists_known_models(daemon: LocalPool) -> None:
    with daemon.pool() as pool, pytest.raises(vgpu.InvalidRequestError, match="h100-80gb"):
        pool.acquire(memory="1GiB", compute=0.1, gpu_model="h100-81gb")


def test_waiter_sees_its_position_and_is_granted_when_capacity_frees(daemon: LocalPool) -> None:
    with daemon.pool() as pool:
        holders = [pool.acquire(memory="70GiB", compute=0.5) for _ in range(2)]
        queued = threading.Event()
        positions: list[int] = []
        result: dict[str, object] = {}

        def on_queued(info: vgpu.QueueInfo) -> None:
            positions.append(info.position)
            queued.set()

        def wait_for_slice() -> None:
            try:
                result["lease"] = pool.acquire(memory="20GiB", compute=0.5, timeout=30, on_queued=on_queued)
            except vgpu.VgpuError as exc:  # pragma: no cover -- reported by the assertion below
                result["error"] = exc

        waiter = threading.Thread(target=wait_for_slice)
        waiter.start()
        assert queued.wait(20)
        assert positions[0] == 1
        assert "lease" not in result
        holders[1].release()
        waiter.join(20)
        assert "error" not in result
        lease = result["lease"]
        assert isinstance(lease, vgpu.Lease)
        assert lease.slices[0].gpu_uuid == holders[1].slices[0].gpu_uuid
        lease.refresh()
        assert lease.status == "granted", "a lease granted from the queue stays granted after delivery"


def test_waiting_past_the_deadline_raises_queue_timeout(daemon: LocalPool) -> None:
    with daemon.pool() as pool:
        pool.acquire(memory="70GiB", compute=0.9)
        pool.acquire(memory="70GiB", compute=0.9)
        with pytest.raises(vgpu.QueueTimeoutError):
            pool.acquire(memory="20GiB", compute=0.5, timeout=1.5)
        # The withdrawn request left nothing behind: a fail-fast request sees the same free space.
        with pytest.raises(vgpu.NoCapacityError):
            pool.acquire(memory="20GiB", compute=0.5, wait=False)


def test_list_and_get_leases(daemon: LocalPool) -> None:
    daemon.set_quota("vision", deserved=1)
    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1, project="vision", description="nb")
        listed = pool.leases(project="vision")
        assert [info.id for info in listed] == [lease.id]
        assert pool.leases(project="nlp") == []
        info = pool.get_lease(lease.id, lease.token)
        assert info.state == "granted"
        with pytest.raises(vgpu.LeasePermissionError):
            pool.get_lease(lease.id, lease.id + ".not-the-secret")
        with pytest.raises(vgpu.LeaseNotFoundError):
            pool.get_lease("lease-000000000000", "lease-000000000000.x")


def test_child_process_attaches_with_the_lease_environment(daemon: LocalPool) -> None:
    import os
    import subprocess
    import sys

    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1)
        out = subprocess.run(
            [sys.executable, "-c", "import vgpu; l = vgpu.attach(); print(l.id, l.status)"],
            env={**os.environ, **lease.env},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert out.stdout.split() == [lease.id, "granted"]
        lease.refresh()
        assert lease.status == "granted"  # attach does not release


def test_eviction_reaches_the_event_stream_and_frees_capacity(daemon: LocalPool, admin: Admin) -> None:
    from vgpu.api.v1 import admin_pb2

    with daemon.pool() as pool:
        lease = pool.acquire(memory="1GiB", compute=0.1)
        events = lease.events()
        first = next(events)
        assert first.type == "snapshot"
        assert first.state == "granted"
        request = admin_pb2.EvictLeaseRequest(lease_id=lease.id, reason="maintenance")
        evictor = threading.Timer(0.2, lambda: admin.admin.EvictLease(request, timeout=10))
        evictor.start()
        last = next(events)
        evictor.join()
        assert last.type == "revoked"
        assert last.state == "revoked"
        assert last.sequence > first.sequence
        assert admin.allocated_memory() == 0


WAITER = """
import vgpu
vgpu.acquire(memory="20GiB", compute=0.5, timeout=120, on_queued=lambda q: print(q.position, flush=True))
"""


def test_a_waiter_that_vanishes_leaves_the_queue(daemon: LocalPool) -> None:
    import os
    import signal
    import subprocess
    import sys

    with daemon.pool() as pool:
        pool.acquire(memory="70GiB", compute=0.9)
        pool.acquire(memory="70GiB", compute=0.9)
        first = subprocess.Popen(
            [sys.executable, "-c", WAITER], env={**os.environ, **daemon.env()}, stdout=subprocess.PIPE, text=True
        )
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "1"
        behind = threading.Event()
        at_front = threading.Event()
        errors: list[BaseException] = []

        def on_queued(info: vgpu.QueueInfo) -> None:
            (behind if info.position == 2 else at_front).set()

        def wait_second() -> None:
            try:
                pool.acquire(memory="20GiB", compute=0.5, timeout=10, on_queued=on_queued)
            except vgpu.QueueTimeoutError:
                pass  # nothing ever frees: the point is the position it reached
            except BaseException as exc:  # noqa: BLE001 -- any failure in the thread is reported below
                errors.append(exc)

        waiter = threading.Thread(target=wait_second)
        waiter.start()
        assert behind.wait(15), "the second waiter queues behind the first"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        first.stdout.close()
        assert at_front.wait(15), "the dead waiter's place is given up"
        waiter.join(30)
        assert errors == []

"""MIG slices end to end: a real vgpud on simulated H100s creates, reuses and destroys instances."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import grpc
import pytest

import vgpu
from tests.integration.conftest import Admin, vgpuctl, wait_until
from vgpu.api.v1 import admin_pb2, types_pb2, workload_pb2
from vgpu.testing import LocalPool, local_pool
from vgpud._private.backend import make_backend
from vgpud._private.backend.base import MigInstance

GiB = 1024**3
READY = types_pb2.MIG_INSTANCE_STATE_READY
WARM = types_pb2.MIG_INSTANCE_STATE_WARM
FOREIGN = types_pb2.MIG_INSTANCE_STATE_FOREIGN


@pytest.fixture
def stubs(daemon: LocalPool) -> Iterator[Admin]:
    admin = Admin(daemon.endpoint)
    yield admin
    admin.close()


def switch(admin: Admin, index: int, mode: types_pb2.GpuMode.ValueType) -> types_pb2.Gpu:
    """Set a GPU's mode and wait until its node daemon has switched the hardware."""
    uuid = admin.gpus()[index].uuid
    admin.admin.SetGpuMode(admin_pb2.SetGpuModeRequest(gpu_uuid=uuid, mode=mode), timeout=10)
    return wait_until(
        lambda: next((g for g in admin.gpus() if g.uuid == uuid and not g.mode_pending), None), what="mode switch"
    )


def instances(admin: Admin, index: int = 0) -> list[types_pb2.MigInstance]:
    return list(admin.gpus()[index].mig_instances)


def hardware(pool: LocalPool, spec: str, index: int = 0) -> list[MigInstance]:
    """What the simulated GPU itself holds (read with the daemon stopped: the sim state file is its hardware)."""
    backend = make_backend("sim", spec, pool.node_name, pool.state_dir)
    try:
        return backend.mig_instances(backend.discover()[index].uuid)
    finally:
        backend.close()


def test_a_mig_lease_runs_on_its_own_instance_and_release_destroys_it(daemon: LocalPool, stubs: Admin) -> None:
    gpu = switch(stubs, 0, types_pb2.GPU_MODE_MIG)
    assert gpu.mig_enabled
    assert gpu.mig_memory_slices == 8
    assert [f.profile for f in gpu.mig_fits][:1] == ["7g.80gb"]
    with daemon.pool().acquire(mig="3g.40gb") as lease:
        (slice_,) = lease.slices
        assert slice_.mig_uuid.startswith("MIG-")
        assert lease.env["CUDA_VISIBLE_DEVICES"] == slice_.mig_uuid
        assert (slice_.isolation, slice_.mig_profile, slice_.gpu_uuid) == ("mig", "3g.40gb", gpu.uuid)
        (inst,) = instances(stubs)
        assert (inst.profile, inst.state, inst.lease_id, inst.uuid) == ("3g.40gb", READY, lease.id, slice_.mig_uuid)
        assert inst.start == 4, "the 3g goes to the upper half, keeping the 4g.40gb start (0) free"
    wait_until(lambda: not instances(stubs), what="the instance to be destroyed")
    daemon.stop()
    assert hardware(daemon, "h100-80gb:2") == []


def test_memory_picks_the_smallest_profile_and_unnamed_isolation_prefers_modest_mig(
    daemon: LocalPool, stubs: Admin
) -> None:
    switch(stubs, 0, types_pb2.GPU_MODE_MIG)
    pool = daemon.pool()
    with pool.acquire(memory="18GiB", isolation="mig") as sized:
        assert sized.slices[0].mig_profile == "1g.20gb"
        assert sized.slices[0].memory_bytes >= 18 * GiB
    with pool.acquire(memory="18GiB") as flexible:
        assert flexible.slices[0].isolation == "mig"
        assert flexible.env["CUDA_VISIBLE_DEVICES"].startswith("MIG-")
    wait_until(lambda: not instances(stubs), what="GPU 0 empty again")
    with pool.acquire(memory="50GiB") as big:  # only a 7g.80gb holds it: shared strands far less
        assert big.slices[0].isolation == "shared"
        second = stubs.gpus()[1]
        assert big.slices[0].gpu_uuid == second.uuid
        proportional = -(-50 * GiB * 1000 // second.memory_bytes)
        assert big.slices[0].compute_milli == proportional, "compute in proportion to memory when none is asked"


def test_bad_mig_requests_name_what_is_possible(daemon: LocalPool, stubs: Admin) -> None:
    pool = daemon.pool()
    with pytest.raises(vgpu.NeverFitsError, match="vgpuctl gpu mode"):
        pool.acquire(mig="3g.40gb")
    switch(stubs, 0, types_pb2.GPU_MODE_MIG)
    with pytest.raises(vgpu.InvalidRequestError, match=r"unknown MIG profile '3g\.41gb'.*3g\.40gb"):
        pool.acquire(mig="3g.41gb")
    with pytest.raises(vgpu.NeverFitsError, match=r"3g\.20gb.*a100.*h100-80gb: 1g\.10gb"):
        pool.acquire(mig="3g.20gb")
    with pytest.raises(vgpu.NeverFitsError, match="no MIG profile of h100-80gb holds 90"):
        pool.acquire(memory="90GiB", isolation="mig")
    with pytest.raises(vgpu.InvalidRequestError, match="fixes memory and compute"):
        pool.acquire(mig="3g.40gb", memory="10GiB")
    with pool.acquire(mig="1g.10gb"):
        with pytest.raises(grpc.RpcError) as busy:
            switch(stubs, 0, types_pb2.GPU_MODE_SHARED)
        assert busy.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "1 lease(s)" in str(busy.value.details())
    with pool.acquire(memory="1GiB", compute=0.1, isolation="shared"):
        with pytest.raises(grpc.RpcError) as busy_shared:
            switch(stubs, 1, types_pb2.GPU_MODE_MIG)
        assert busy_shared.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_a_pool_without_mig_gpus_says_which_models_have_mig() -> None:
    with local_pool("l4-24gb:1") as pool:
        with pytest.raises(vgpu.NeverFitsError, match=r"MIG-capable models: .*h100-80gb"):
            pool.pool().acquire(mig="3g.40gb")
        admin = Admin(pool.endpoint)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                switch(admin, 0, types_pb2.GPU_MODE_MIG)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "cannot run MIG" in str(refused.value.details())
        finally:
            admin.close()


def test_mig_slots_are_never_given_twice_under_concurrent_acquires(daemon: LocalPool, stubs: Admin) -> None:
    switch(stubs, 0, types_pb2.GPU_MODE_MIG)
    pool = daemon.pool()
    granted: list[vgpu.Lease] = []
    refused: list[Exception] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            lease = pool.acquire(mig="1g.10gb", wait=False)
        except vgpu.NoCapacityError as exc:
            with lock:
                refused.append(exc)
        else:
            with lock:
                granted.append(lease)

    threads = [threading.Thread(target=one) for _ in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert (len(granted), len(refused)) == (7, 2), "an H100 holds seven 1g.10gb instances"
        assert len({lease.slices[0].mig_uuid for lease in granted}) == 7
        assert sorted(i.start for i in instances(stubs)) == list(range(7))
        assert "no room for 1g.10gb" in str(refused[0])
    finally:
        for lease in granted:
            lease.release()


def refreshed(lease: vgpu.Lease) -> bool:
    """lease.refresh() once the client reaches the restarted daemon: the lease's event stream tried to while it
    was down, so the channel may still sit out its reconnect backoff (at most 2 s) when the daemon serves again."""
    try:
        lease.refresh()
    except vgpu.DaemonUnavailableError:
        return False
    return True


def test_instances_outlive_a_daemon_crash_and_foreign_ones_are_never_touched(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    spec = "h100-80gb:1"
    with local_pool(spec) as daemon:
        admin = Admin(daemon.endpoint)
        try:
            switch(admin, 0, types_pb2.GPU_MODE_MIG)
            lease = daemon.pool().acquire(mig="3g.40gb")
            mig_uuid = lease.slices[0].mig_uuid
            daemon.kill()
            backend = make_backend("sim", spec, daemon.node_name, daemon.state_dir)
            try:  # someone runs `nvidia-smi mig -cgi` by hand while vgpud is down
                foreign = backend.create_mig_instance(backend.discover()[0].uuid, 19, 0)
            finally:
                backend.close()
            daemon.restart()
            by_state = wait_until(
                lambda: {i.state: i for i in instances(admin)} if len(instances(admin)) == 2 else None,
                what="the foreign instance to be booked",
            )
            assert by_state[READY].uuid == mig_uuid
            assert by_state[FOREIGN].uuid == foreign.mig_uuid
            assert by_state[FOREIGN].lease_id == ""
            wait_until(lambda: refreshed(lease), timeout=10, what="the client to reconnect")
            assert lease.status == "granted"
            lease.release()
            wait_until(lambda: [i.state for i in instances(admin)] == [FOREIGN], what="our instance destroyed")
            with pytest.raises(grpc.RpcError, match="did not create"):
                switch(admin, 0, types_pb2.GPU_MODE_SHARED)
            with pytest.raises(vgpu.NoCapacityError):
                daemon.pool().acquire(mig="7g.80gb", wait=False)
        finally:
            admin.close()
        daemon.stop()
        assert [i.mig_uuid for i in hardware(daemon, spec)] == [foreign.mig_uuid]


def test_keep_warm_hands_the_same_instance_to_the_next_request_of_its_profile() -> None:
    with local_pool("h100-80gb:1", extra_args=["--mig-keep-warm", "600"]) as daemon:
        admin = Admin(daemon.endpoint)
        try:
            switch(admin, 0, types_pb2.GPU_MODE_MIG)
            pool = daemon.pool()
            with pool.acquire(mig="3g.40gb") as first:
                kept = first.slices[0].mig_uuid
            wait_until(lambda: [i.state for i in instances(admin)] == [WARM], what="the instance to turn warm")
            with pool.acquire(mig="3g.40gb") as second:
                assert second.slices[0].mig_uuid == kept
            wait_until(lambda: [i.state for i in instances(admin)] == [WARM], what="warm again")
            gpu = switch(admin, 0, types_pb2.GPU_MODE_SHARED)  # warm instances do not hold a GPU in MIG mode
            assert not gpu.mig_enabled
            assert not gpu.mig_instances
        finally:
            admin.close()


def test_vgpuctl_switches_modes_and_shows_mig_slots(daemon: LocalPool, stubs: Admin) -> None:
    uuid = stubs.gpus()[0].uuid
    switched = vgpuctl(daemon, "gpu", "mode", uuid, "mig")
    assert switched.returncode == 0, switched.stderr
    wait_until(lambda: not stubs.gpus()[0].mode_pending, what="MIG on")
    with daemon.pool().acquire(mig="3g.40gb") as lease:
        shown = vgpuctl(daemon, "mig", "show")
        assert shown.returncode == 0, shown.stderr
        assert "3g.40gb" in shown.stdout
        assert lease.id in shown.stdout
        busy = vgpuctl(daemon, "gpu", "mode", uuid, "shared")
        assert busy.returncode != 0
        assert "GPU_BUSY" in busy.stderr
        layout = daemon.state_dir / "layout.toml"  # the README's example
        layout.write_text('[models."h100-80gb"]\nprofiles = ["3g.40gb", "2g.20gb", "1g.10gb@6"]\n')
        planned = vgpuctl(daemon, "mig", "plan", str(layout), "--json")
        assert planned.returncode == 0, planned.stderr
        steps = json.loads(planned.stdout)
        held = [s for s in steps if s["gpu_uuid"] == uuid and s["action"] == "ACTION_DESTROY"]
        assert held, steps
        assert all(lease.id in s["blocked_by"] for s in held if s["start"] == 4)
        assert instances(stubs)[0].state == READY, "a plan is a dry run"
        layout.write_text('[models."h100-80gb"]\nprofiles = ["9g.90gb"]\n')
        bad = vgpuctl(daemon, "mig", "plan", str(layout))
        assert bad.returncode == 2
        assert "9g.90gb" in bad.stderr


def test_auto_mode_switches_an_idle_gpu_to_what_the_queue_needs(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = tmp_path_factory.mktemp("cfg") / "vgpud.toml"
    config.write_text("[mig]\nauto_mode = true\n")
    with local_pool("h100-80gb:1", extra_args=["--config", str(config)]) as daemon:
        admin = Admin(daemon.endpoint)
        try:
            pool = daemon.pool()
            with pool.acquire(mig="3g.40gb", timeout=30) as lease:  # waits while the idle GPU is switched
                assert lease.env["CUDA_VISIBLE_DEVICES"].startswith("MIG-")
                assert admin.gpus()[0].mode == types_pb2.GPU_MODE_MIG
            wait_until(lambda: not instances(admin), what="the instance to be destroyed")
            with pool.acquire(memory="10GiB", compute=0.1, isolation="shared", timeout=30) as shared:
                assert shared.env["CUDA_VISIBLE_DEVICES"].startswith("GPU-")
                gpu = admin.gpus()[0]
                assert (gpu.mode, gpu.mig_enabled) == (types_pb2.GPU_MODE_SHARED, False)
        finally:
            admin.close()


def test_a_preempted_mig_lease_hears_resumed_only_once_its_new_instance_exists(daemon: LocalPool, stubs: Admin) -> None:
    """The resumed lease's MIG instance is created after the resume is written: the event must wait for it."""
    switch(stubs, 0, types_pb2.GPU_MODE_MIG)
    answers = stubs.workload.Acquire(
        workload_pb2.AcquireRequest(resources=types_pb2.ResourceRequest(mig_profile="3g.40gb")), timeout=30
    )
    lease = list(answers)[-1].lease
    (first,) = lease.slices
    stream = stubs.workload.WatchLease(workload_pb2.WatchLeaseRequest(lease_id=lease.id, token=lease.token), timeout=30)
    resumed: list[types_pb2.Lease] = []
    try:
        for event in stream:
            if event.type == workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT:
                stubs.preempt(lease.id)
            elif event.type == workload_pb2.LEASE_EVENT_TYPE_PREEMPT:
                ack = workload_pb2.AckPreemptRequest(lease_id=lease.id, token=lease.token)
                stubs.workload.AckPreempt(ack, timeout=10)
            elif event.type == workload_pb2.LEASE_EVENT_TYPE_RESUMED:
                resumed.append(event.lease)
                break
    finally:
        stream.cancel()
    (slice_,) = resumed[0].slices
    assert slice_.mig_uuid.startswith("MIG-"), "RESUMED went out before the lease's instance existed"
    assert slice_.mig_uuid != first.mig_uuid, "the old instance was destroyed at the checkpoint; this is a new one"
    assert [i.uuid for i in instances(stubs)] == [slice_.mig_uuid]
    stubs.workload.Release(workload_pb2.ReleaseRequest(lease_id=lease.id, token=lease.token), timeout=10)


def test_an_sdk_client_resumes_on_its_new_mig_instance(daemon: LocalPool, stubs: Admin) -> None:
    switch(stubs, 0, types_pb2.GPU_MODE_MIG)
    seen: list[str] = []
    restored = threading.Event()

    def on_resume(lease: vgpu.Lease) -> None:
        seen.append(lease.env["CUDA_VISIBLE_DEVICES"])
        restored.set()

    with daemon.pool() as pool:
        lease = pool.acquire(mig="2g.20gb", wait=False, on_preempt=lambda _lease, _notice: None, on_resume=on_resume)
        before = lease.slices[0].mig_uuid
        stubs.preempt(lease.id)
        assert restored.wait(20), "the lease resumed and the SDK ran on_resume"
        assert seen[0].startswith("MIG-"), f"on_resume ran before the new instance existed: {seen[0]!r}"
        assert seen[0] != before
        assert lease.slices[0].mig_uuid == seen[0]
        lease.release()

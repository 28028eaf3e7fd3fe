"""Fair sharing against a real daemon: projects and classes, limits, the preemption protocol, reclaim, elastic."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

import vgpu
from tests.integration.conftest import Admin, GiB, config_args, vgpuctl, wait_until
from tests.support import SharedEtcd
from vgpu._private import reasons
from vgpu._private.rpc_errors import failure_of_sync_call
from vgpu.api.v1 import admin_pb2, types_pb2, workload_pb2
from vgpu.testing import LocalPool, local_pool

FAST_CLASSES = """
[scheduling]
backfill_bound_s = 0
grow_interval_s = 0

[priority_classes.inference]
value = 200
preemptible = false
in_quota_only = true

[priority_classes.train]
value = 100
preempt_grace_s = 20
min_runtime_s = 0

[priority_classes.best-effort]
value = 0
preempt_grace_s = 20
min_runtime_s = 0
"""


class Raw(Admin):
    """Workload and admin stubs below the SDK: a client that acks by hand, or never heartbeats."""

    def acquire(self, resources: types_pb2.ResourceRequest, **fields: object) -> types_pb2.Lease:
        request = workload_pb2.AcquireRequest(resources=resources, **fields)  # type: ignore[arg-type]  # test kwargs
        answers = list(self.workload.Acquire(request, timeout=30))
        return answers[-1].lease

    def lease(self, lease: types_pb2.Lease | vgpu.Lease) -> types_pb2.Lease:
        return self.get(lease.id, lease.token)

    def once(self, lease: types_pb2.Lease | vgpu.Lease, state: int) -> types_pb2.Lease | None:
        """The lease if it is in `state` now (for wait_until)."""
        current = self.lease(lease)
        return current if current.state == state else None

    def ack(self, lease: types_pb2.Lease) -> types_pb2.Lease:
        request = workload_pb2.AckPreemptRequest(lease_id=lease.id, token=lease.token)
        return self.workload.AckPreempt(request, timeout=10).lease


def whole(count: int = 1) -> types_pb2.ResourceRequest:
    return types_pb2.ResourceRequest(isolation=types_pb2.ISOLATION_WHOLE, count=count)


def state_of(raw: Raw, lease: types_pb2.Lease) -> int:
    return raw.lease(lease).state


def reason_of(exc: grpc.RpcError) -> str:
    return failure_of_sync_call(exc).reason or ""


@pytest.fixture
def fair(tmp_path: Path) -> Iterator[LocalPool]:
    """Two H100s, short grace and no minimum runtime (so reclaim acts at once), a 4 s lease TTL."""
    with local_pool("h100-80gb:2", extra_args=config_args(tmp_path, FAST_CLASSES), ttl=4) as pool:
        yield pool


@pytest.fixture
def raw(fair: LocalPool) -> Iterator[Raw]:
    client = Raw(fair.endpoint)
    yield client
    client.channel.close()


def test_unknown_project_and_priority_are_refused_with_what_to_do(fair: LocalPool) -> None:
    with fair.pool() as pool:
        with pytest.raises(vgpu.InvalidRequestError, match="vgpuctl quota set ghost") as exc:
            pool.acquire(memory="1GiB", compute=0.1, project="ghost", wait=False)
        assert exc.value.reason == reasons.UNKNOWN_PROJECT
        with pytest.raises(vgpu.InvalidRequestError, match="inference, train, best-effort") as exc:
            pool.acquire(memory="1GiB", compute=0.1, priority="urgent", wait=False)
        assert exc.value.reason == reasons.UNKNOWN_PRIORITY
        lease = pool.acquire(memory="1GiB", compute=0.1, wait=False)
        assert (lease.project, lease.priority) == ("", "train")
        lease.release()


def test_quota_limit_refuses_a_fail_fast_request_past_it(fair: LocalPool) -> None:
    fair.set_quota("vision", deserved=1, limit=1)
    with fair.pool() as pool:
        first = pool.acquire(gpus=1, project="vision", wait=False)
        with pytest.raises(vgpu.QuotaExceededError, match="limit"):
            pool.acquire(gpus=1, project="vision", wait=False)
        first.release()
        pool.acquire(gpus=1, project="vision", wait=False).release()


def test_in_quota_only_class_never_borrows(fair: LocalPool) -> None:
    fair.set_quota("serving", deserved=1)
    with fair.pool() as pool:
        held = pool.acquire(gpus=1, project="serving", priority="inference", wait=False)
        with pytest.raises(vgpu.QuotaExceededError, match="deserved quota"):
            pool.acquire(gpus=1, project="serving", priority="inference", wait=False)
        held.release()


def test_admin_preempt_ack_suspends_then_resumes_with_every_step_stamped(fair: LocalPool, raw: Raw) -> None:
    lease = raw.acquire(whole())
    asked = raw.preempt(lease.id)
    assert asked.state == types_pb2.LEASE_STATE_PREEMPTING
    assert asked.HasField("preempt_deadline")
    heartbeat = raw.workload.Heartbeat(workload_pb2.HeartbeatRequest(lease_id=lease.id, token=lease.token), timeout=10)
    assert heartbeat.state == types_pb2.LEASE_STATE_PREEMPTING
    assert heartbeat.HasField("preempt_deadline")
    suspended = raw.ack(lease)
    assert suspended.state in (types_pb2.LEASE_STATE_SUSPENDED, types_pb2.LEASE_STATE_GRANTED)
    resumed = wait_until(lambda: raw.once(lease, types_pb2.LEASE_STATE_GRANTED), what="resume")
    assert [s.step for s in resumed.steps][-4:] == ["preempt", "checkpointed", "suspended", "resumed"]
    assert resumed.preemptions == 1
    assert len(resumed.slices) == 1


def test_watch_stream_says_preempt_then_resumed(fair: LocalPool, raw: Raw) -> None:
    lease = raw.acquire(whole())
    stream = raw.workload.WatchLease(workload_pb2.WatchLeaseRequest(lease_id=lease.id, token=lease.token), timeout=30)
    kinds: list[int] = []
    for event in stream:
        kinds.append(event.type)
        if event.type == workload_pb2.LEASE_EVENT_TYPE_SNAPSHOT:
            raw.preempt(lease.id)
        elif event.type == workload_pb2.LEASE_EVENT_TYPE_PREEMPT:
            assert event.preempt.reason == "test"
            assert event.preempt.HasField("deadline")
            raw.ack(lease)
        elif event.type == workload_pb2.LEASE_EVENT_TYPE_RESUMED:
            break
    stream.cancel()
    assert workload_pb2.LEASE_EVENT_TYPE_SUSPENDED in kinds
    assert kinds[-1] == workload_pb2.LEASE_EVENT_TYPE_RESUMED


def test_ignored_preempt_is_revoked_at_the_deadline(fair: LocalPool, raw: Raw) -> None:
    with fair.pool() as pool:  # a client that keeps heartbeating but never acknowledges
        lease = pool.acquire(gpus=1, wait=False)
        raw.preempt(lease.id, grace_s=1)
        ended = wait_until(lambda: raw.once(lease, types_pb2.LEASE_STATE_REVOKED), what="revoke")
        assert ended.end_reason == reasons.END_PREEMPT_MISSED
        gpus = raw.admin.ListGpus(admin_pb2.ListGpusRequest(), timeout=10).gpus
        assert sum(g.allocated.slices for g in gpus) == 0


def test_client_that_dies_mid_checkpoint_expires_and_frees_its_gpu(fair: LocalPool, raw: Raw) -> None:
    lease = raw.acquire(whole(), ttl=duration_pb2.Duration(seconds=3))  # raw: no heartbeats, as if it crashed
    raw.preempt(lease.id, grace_s=60)
    ended = wait_until(lambda: raw.once(lease, types_pb2.LEASE_STATE_EXPIRED), what="expiry")
    assert ended.end_reason == reasons.END_EXPIRED
    gpus = raw.admin.ListGpus(admin_pb2.ListGpusRequest(), timeout=10).gpus
    assert sum(g.allocated.slices for g in gpus) == 0


def test_non_preemptible_lease_cannot_be_preempted(fair: LocalPool, raw: Raw) -> None:
    fair.set_quota("serving", deserved=1)
    lease = raw.acquire(whole(), project="serving", priority="inference")
    with pytest.raises(grpc.RpcError) as exc:
        raw.preempt(lease.id)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(exc.value) == reasons.NOT_PREEMPTIBLE


def test_ack_without_preempt_is_refused(fair: LocalPool, raw: Raw) -> None:
    lease = raw.acquire(whole())
    with pytest.raises(grpc.RpcError) as exc:
        raw.ack(lease)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(exc.value) == reasons.NOT_PREEMPTING


def test_reclaim_takes_borrowed_gpus_back_for_a_project_below_its_quota(fair: LocalPool, raw: Raw) -> None:
    fair.set_quota("vision", deserved=1)
    fair.set_quota("nlp", deserved=1)
    serving = raw.acquire(whole(), project="vision", priority="inference")  # in quota, never a victim
    borrowed = raw.acquire(whole(), project="nlp")  # nlp is below its quota: takes the second GPU
    got: list[types_pb2.Lease] = []
    waiter = threading.Thread(target=lambda: got.append(raw.acquire(whole(), project="nlp", wait=True)))
    waiter.start()  # nlp's second GPU would be borrowing: it waits
    wait_until(lambda: len(raw.admin.ListQueue(admin_pb2.ListQueueRequest(), timeout=10).entries) == 1, what="queue")
    raw.workload.Release(workload_pb2.ReleaseRequest(lease_id=serving.id, token=serving.token), timeout=10)
    waiter.join(30)
    (second,) = got  # nlp now borrows a GPU beyond its deserved one
    claimant: list[types_pb2.Lease] = []
    asker = threading.Thread(target=lambda: claimant.append(raw.acquire(whole(), project="vision", wait=True)))
    asker.start()
    victim = wait_until(
        lambda: next((x for x in (borrowed, second) if state_of(raw, x) == types_pb2.LEASE_STATE_PREEMPTING), None),
        what="the leader to preempt one nlp lease",
    )
    other = second if victim is borrowed else borrowed
    assert state_of(raw, other) == types_pb2.LEASE_STATE_GRANTED
    raw.ack(victim)
    asker.join(30)
    (granted,) = claimant
    assert granted.state == types_pb2.LEASE_STATE_GRANTED
    assert state_of(raw, victim) == types_pb2.LEASE_STATE_SUSPENDED  # waits: nlp is at its fair share
    entries = raw.admin.ListQueue(admin_pb2.ListQueueRequest(), timeout=10).entries
    assert [(e.lease_id, e.suspended) for e in entries] == [(victim.id, True)]
    raw.workload.Release(workload_pb2.ReleaseRequest(lease_id=granted.id, token=granted.token), timeout=10)
    wait_until(lambda: state_of(raw, victim) == types_pb2.LEASE_STATE_GRANTED, what="the victim to resume")


def test_elastic_lease_shrinks_before_anything_is_preempted_and_grows_back(tmp_path: Path) -> None:
    with local_pool("h100-80gb:1", extra_args=config_args(tmp_path, FAST_CLASSES)) as pool:
        raw = Raw(pool.endpoint)
        elastic = raw.acquire(
            types_pb2.ResourceRequest(memory_bytes=10 * GiB, compute_milli=250, compute_milli_max=1000)
        )
        assert elastic.slices[0].compute_milli == 1000
        got: list[types_pb2.Lease] = []
        asker = threading.Thread(
            target=lambda: got.append(
                raw.acquire(types_pb2.ResourceRequest(memory_bytes=10 * GiB, compute_milli=500), wait=True)
            )
        )
        asker.start()
        asker.join(30)
        (other,) = got
        shrunk = raw.lease(elastic)
        assert shrunk.state == types_pb2.LEASE_STATE_GRANTED
        # Shrunk to 250 to let the other in, then grown into the 250 still idle beside it.
        assert 250 <= shrunk.slices[0].compute_milli <= 500
        assert "resized" in [s.step for s in shrunk.steps]
        assert shrunk.preemptions == 0
        raw.workload.Release(workload_pb2.ReleaseRequest(lease_id=other.id, token=other.token), timeout=10)
        wait_until(lambda: raw.lease(elastic).slices[0].compute_milli == 1000, what="the elastic lease to grow back")
        raw.channel.close()


def test_bad_quotas_are_refused_and_oversubscription_is_reported(fair: LocalPool, raw: Raw) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        raw.admin.SetQuota(
            admin_pb2.SetQuotaRequest(quota=types_pb2.Quota(project="x", deserved_milli=2000, limit_milli=1000)),
            timeout=10,
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    answer = raw.admin.SetQuota(
        admin_pb2.SetQuotaRequest(quota=types_pb2.Quota(project="big", deserved_milli=5000, over_quota_weight=1)),
        timeout=10,
    )
    assert answer.warnings
    assert "more than the pool" in answer.warnings[0]
    listed = raw.admin.ListQuotas(admin_pb2.ListQuotasRequest(), timeout=10)
    assert listed.capacity_milli == 2000
    assert [c.name for c in listed.priority_classes] == ["inference", "train", "best-effort"]
    with pytest.raises(grpc.RpcError) as exc:
        raw.admin.GetQuota(admin_pb2.GetQuotaRequest(project="nobody"), timeout=10)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_sdk_client_checkpoints_yields_and_resumes_through_its_callbacks(fair: LocalPool, raw: Raw) -> None:
    saved = threading.Event()
    restored = threading.Event()
    notices: list[vgpu.PreemptNotice] = []

    def save(lease: vgpu.Lease, notice: vgpu.PreemptNotice) -> None:
        notices.append(notice)
        saved.set()

    with fair.pool() as pool:
        lease = pool.acquire(gpus=1, wait=False, on_preempt=save, on_resume=lambda _lease: restored.set())
        raw.preempt(lease.id, grace_s=30)
        assert saved.wait(20), "the SDK ran the checkpoint callback"
        assert restored.wait(20), "the lease resumed and the SDK ran the restore callback"
        assert notices[0].reason == "test"
        assert lease.status == "granted"
        assert lease.preemptions == 1
        assert lease.env["CUDA_VISIBLE_DEVICES"]
        assert [name for name, _ in lease.steps][-3:] == ["checkpointed", "suspended", "resumed"]
        lease.release()


def test_sdk_checkpoint_at_iteration_boundaries(fair: LocalPool, raw: Raw) -> None:
    with fair.pool() as pool:
        lease = pool.acquire(gpus=1, wait=False)
        assert lease.checkpoint() is False  # nothing asked: returns at once
        raw.preempt(lease.id, grace_s=30)
        assert lease.wait_preempt(timeout=20) is not None
        assert lease.checkpoint() is True  # acknowledged, suspended, resumed
        assert raw.lease(lease).state == types_pb2.LEASE_STATE_GRANTED
        lease.release()


def test_reclaim_across_daemons_with_a_cooperative_sdk_client(shared_etcd: SharedEtcd, tmp_path: Path) -> None:
    args = (*shared_etcd.args, *config_args(tmp_path, FAST_CLASSES))
    with local_pool("h100-80gb:1", extra_args=args, ttl=5) as a, local_pool("h100-80gb:1", extra_args=args, ttl=5) as b:
        a.set_quota("vision", deserved=1)
        a.set_quota("nlp", deserved=0)
        saved: list[str] = []
        resumed = threading.Event()
        with b.pool() as on_b, a.pool() as on_a:
            nlp = [
                on_b.acquire(
                    gpus=1,
                    node=None,
                    project="nlp",
                    priority="best-effort",
                    on_preempt=lambda lease, _notice: saved.append(lease.id),
                    on_resume=lambda _lease: resumed.set(),
                )
                for _ in range(2)
            ]
            assert {lease.nodes[0] for lease in nlp} == {a.node_name, b.node_name}  # nlp borrows both GPUs
            vision = on_a.acquire(gpus=1, node=None, project="vision", timeout=30)  # waits, reclaims one
            assert len(saved) == 1, "exactly one nlp lease was asked to yield, and its client checkpointed"
            (victim,) = [lease for lease in nlp if lease.id == saved[0]]
            assert victim.suspended
            vision.release()
            assert resumed.wait(30), "the suspended nlp lease resumed once vision gave its GPU back"
            assert victim.status == "granted"
            assert victim.preemptions == 1
            for lease in nlp:
                lease.release()


def test_waiting_clients_see_their_fair_position_and_an_estimated_wait(fair: LocalPool, raw: Raw) -> None:
    fair.set_quota("vision", deserved=3)  # more than the pool: allowed (reported); vision stays below it
    fair.set_quota("nlp", deserved=0)
    with fair.pool() as pool:
        held = [pool.acquire(gpus=1, project="vision", priority="inference", wait=False) for _ in range(2)]
        seen: dict[str, list[vgpu.QueueInfo]] = {"nlp": [], "vision": []}
        started: list[threading.Thread] = []
        for project in ("nlp", "vision"):  # nlp asks first, but vision is below its deserved quota
            thread = threading.Thread(
                target=lambda p=project: pool.acquire(gpus=1, project=p, timeout=30, on_queued=seen[p].append).release()
            )
            thread.start()
            started.append(thread)
            wait_until(lambda p=project: seen[p], what=f"{project} to queue")  # type: ignore[misc]  # as above
        order = raw.admin.ListQueue(admin_pb2.ListQueueRequest(), timeout=10).entries
        assert [e.project for e in order] == ["vision", "nlp"]
        assert wait_until(lambda: seen["nlp"] and seen["nlp"][-1].position == 2, what="nlp to be second")
        assert seen["nlp"][-1].estimated_wait_s is not None  # two grants just happened: a rate exists
        for lease in held:
            lease.release()
        for thread in started:
            thread.join(30)


def test_elastic_gpu_count_shrinks_for_a_waiter_and_grows_back(fair: LocalPool, raw: Raw) -> None:
    resized = threading.Event()
    with fair.pool() as pool:
        elastic = pool.acquire(gpus=(1, 2), wait=False, on_resize=lambda _lease: resized.set())
        assert len(list(elastic.slices)) == 2  # both GPUs idle: granted at its maximum (list(): no narrowing)
        other = pool.acquire(gpus=1, timeout=30)  # waits; the leader gives back one of the elastic GPUs
        assert resized.wait(20)
        assert len(list(elastic.slices)) == 1
        assert elastic.preemptions == 0
        assert other.slices[0].gpu_uuid != elastic.slices[0].gpu_uuid
        resized.clear()
        other.release()
        wait_until(lambda: len(raw.lease(elastic).slices) == 2, what="the elastic lease to grow back")
        assert resized.wait(20)
        assert len(list(elastic.slices)) == 2
        elastic.release()


def test_vgpuctl_drives_quotas_queue_and_preemption(fair: LocalPool, raw: Raw) -> None:
    made = vgpuctl(fair, "quota", "set", "vision", "--deserved", "1gpu", "--limit", "2gpu", check=True)
    assert "vision" in made.stdout
    listed = json.loads(vgpuctl(fair, "quota", "list", "--json", check=True).stdout)
    assert [p["quota"]["project"] for p in listed["projects"]] == ["vision"]
    bad = vgpuctl(fair, "quota", "set", "vision", "--deserved", "4xyz")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1
    lease = raw.acquire(whole(), project="vision")
    preempted = json.loads(vgpuctl(fair, "preempt", lease.id, "--grace", "5s", "--json", check=True).stdout)
    assert preempted["state"] == "LEASE_STATE_PREEMPTING"
    raw.ack(lease)
    queue = vgpuctl(fair, "queue", check=True)
    assert queue.returncode == 0
    busy = vgpuctl(fair, "quota", "delete", "vision")
    assert busy.returncode == 1
    assert "still has" in busy.stderr

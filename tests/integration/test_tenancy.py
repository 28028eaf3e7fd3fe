"""Tenancy against a real vgpud, with an unprivileged local user (uid 65534) as the attacker.

Every attack from issue 16's "Why" is tried as that user and must be refused with the right status and reason,
change nothing, and leave an audit record; the same operations still work for root (an admin) and for a
lease's owner. The attacker runs in a child process that drops to uid 65534 after its imports (tests/as_user.py).
"""

from __future__ import annotations

import grp
import json
import os
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import vgpu
from tests.as_user import run_as
from tests.integration.conftest import config_args, vgpuctl, wait_until
from tests.support import free_ports
from vgpu._private import reasons
from vgpu._private.channels import authenticated_channel
from vgpu._private.local_credential import METADATA_KEY, credential_socket_path
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, types_pb2, workload_pb2, workload_pb2_grpc
from vgpu.testing import LocalPool, local_pool
from vgpud._private.auth.credentials import CredentialKey

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the attacker runs as another uid")

CONFIG = """
[priority_classes.inference]
value = 200
preemptible = false
in_quota_only = true
projects = ["vision"]
[priority_classes.train]
value = 100
"""


@pytest.fixture
def shared_host() -> Iterator[LocalPool]:
    """A vgpud whose socket other local users can reach (state dir 0755, as /run/vgpu is), two H100s."""
    state = Path(tempfile.mkdtemp(prefix="vgpu-", dir="/tmp"))
    state.chmod(0o755)
    (port,) = free_ports(1)
    args = [*config_args(state, CONFIG), "--metrics-port", str(port)]
    with local_pool("h100-80gb:2", state_dir=state, extra_args=args) as pool:
        pool.metrics_port = port  # type: ignore[attr-defined]  # for the refusal counter's test
        yield pool


def attacker(pool: LocalPool, code: str, gids: tuple[int, ...] = (NOBODY,)) -> list[Any]:
    """Run `code` as uid 65534 with `ep` bound to the pool's endpoint."""
    return run_as(NOBODY, gids, f"ep = {pool.endpoint!r}\nimport vgpu\n{code}")


def admin_stub(pool: LocalPool) -> tuple[grpc.Channel, admin_pb2_grpc.AdminServiceStub]:
    channel = authenticated_channel(pool.endpoint)
    return channel, admin_pb2_grpc.AdminServiceStub(channel)


def audit_records(
    pool: LocalPool, *args: str, until: Callable[[list[dict[str, Any]]], bool] = bool
) -> list[dict[str, Any]]:
    """What `vgpuctl audit --json` (as root) shows once `until` holds (the daemon writes records every second)."""

    def read() -> list[dict[str, Any]] | None:
        done = vgpuctl(pool, "audit", "--json", *args)
        assert done.returncode == 0, done.stderr
        records: list[dict[str, Any]] = json.loads(done.stdout).get("records", [])
        return records if until(records) else None

    return wait_until(read, what="audit records")


def test_admin_mutations_as_an_unprivileged_user_are_refused_and_change_nothing(shared_host: LocalPool) -> None:
    pool = shared_host
    with pool.pool() as root:
        victim = root.acquire(memory="10GiB", compute=0.25, wait=False)
        uuid = victim.slices[0].gpu_uuid
        pool.set_quota("vision", deserved=1, members=["user:root"])
        results = attacker(
            pool,
            f"""
lease, node, gpu = {victim.id!r}, {pool.node_name!r}, {uuid!r}
for args in (
    ("evict", lease),
    ("preempt", lease, "--grace", "1s"),
    ("quota", "set", "vision", "--deserved", "8gpu"),
    ("quota", "set", "mine", "--deserved", "1gpu"),
    ("quota", "delete", "vision"),
    ("drain", node),
    ("gpu", "mode", gpu, "exclusive"),
    ("mig", "plan", "/dev/null"),
    ("audit",),
):
    emit([list(args), *vgpuctl("--endpoint", ep, *args)])
""",
        )
        for args, code, out, err in results:
            assert code == 1, (args, out, err)
            assert err.startswith("vgpuctl: error: ROLE_NOT_ALLOWED: "), (args, err)
            assert "you are nobody (user)" in err, err
            assert len(err.strip().splitlines()) == 1
        assert victim.status == "granted"
        assert root.get_lease(victim.id, victim.token).state == "granted"
        channel, admin = admin_stub(pool)
        with channel:
            quotas = {
                q.quota.project: q.quota for q in admin.ListQuotas(admin_pb2.ListQuotasRequest(), timeout=10).projects
            }
            assert quotas["vision"].deserved_milli == 1000
            assert "mine" not in quotas
            node = admin.ListNodes(admin_pb2.ListNodesRequest(), timeout=10).nodes[0]
            assert node.state == types_pb2.NODE_STATE_READY
            gpu = next(g for g in admin.ListGpus(admin_pb2.ListGpusRequest(), timeout=10).gpus if g.uuid == uuid)
            assert gpu.mode == types_pb2.GPU_MODE_SHARED
        # The same operations work for root, an admin, and each leaves an audit record naming it.
        assert vgpuctl(pool, "drain", pool.node_name).returncode == 0
        assert vgpuctl(pool, "drain", pool.node_name, "--undo").returncode == 0
        busy = vgpuctl(pool, "gpu", "mode", uuid, "exclusive")  # an admin mutation refused for another reason
        assert busy.returncode == 1
        assert "GPU_BUSY" in busy.stderr
        assert vgpuctl(pool, "evict", victim.id).returncode == 0
    records = audit_records(
        pool,
        "--since",
        "10m",
        until=lambda rs: any(r["method"] == "AdminService/EvictLease" and r["outcome"] == "allowed" for r in rs),
    )
    refused = [r for r in records if r["outcome"] == "refused"]
    assert {r["method"] for r in refused} >= {
        "AdminService/EvictLease",
        "AdminService/PreemptLease",
        "AdminService/SetQuota",
        "AdminService/DeleteQuota",
        "AdminService/DrainNode",
        "AdminService/SetGpuMode",
        "AdminService/PlanMigLayout",
        "AdminService/ListAudit",
    }
    refused = [r for r in refused if r["reason"] != "GPU_BUSY"]
    assert all(r["user"] == "nobody" and r["identity"] == f"local:uid={NOBODY}" for r in refused)
    assert all(r["reason"] == reasons.ROLE_NOT_ALLOWED and r["role"] == "user" for r in refused)
    busy_record = [r for r in records if r["reason"] == "GPU_BUSY"]
    assert [(r["user"], r["method"], r["outcome"]) for r in busy_record] == [
        ("root", "AdminService/SetGpuMode", "refused")
    ]
    evicts = [r for r in records if r["outcome"] == "allowed" and r["method"] == "AdminService/EvictLease"]
    assert evicts
    assert evicts[0]["user"] == "root"
    assert evicts[0]["target"] == f"lease={victim.id}"
    nobody_only = audit_records(pool, "--identity", f"uid:{NOBODY}")
    assert {r["user"] for r in nobody_only} == {"nobody"}


def test_acquire_only_in_your_projects_and_the_owner_is_who_the_kernel_says(shared_host: LocalPool) -> None:
    pool = shared_host
    pool.set_quota("vision", deserved=1, members=["user:root"])
    code = """
from vgpu.api.v1 import workload_pb2, workload_pb2_grpc, types_pb2
from vgpu._private.channels import authenticated_channel
def tries(**kw):
    try:
        with vgpu.Pool(ep) as p:
            lease = p.acquire(memory="1GiB", compute=0.1, wait=False, **kw)
            info = p.get_lease(lease.id, lease.token)
            return ["granted", lease.id, lease.token, info.owner.user, info.owner.identity, info.owner.uid]
    except vgpu.VgpuError as e:
        return ["refused", type(e).__name__, e.reason, str(e)]
emit(tries(project="vision", priority="inference"))
emit(tries(project="vision"))
emit(tries(priority="inference"))
# The owner fields of the request are the client's words: vgpud stores who the kernel says is calling.
with authenticated_channel(ep) as channel:
    stub = workload_pb2_grpc.WorkloadServiceStub(channel)
    request = workload_pb2.AcquireRequest(
        resources=types_pb2.ResourceRequest(memory_bytes=1 << 30, compute_milli=100),
        owner=types_pb2.Owner(user="root", host="elsewhere", pid=1, description="forged"),
    )
    lease = next(iter(stub.Acquire(request, timeout=10))).lease
    owner = lease.owner
    emit(["forged", lease.id, owner.user, owner.identity, owner.uid, owner.pid, owner.description])
"""
    member, project_refused, class_refused, forged = attacker(pool, code)
    assert member[:3] == ["refused", "PermissionDeniedError", reasons.NOT_PROJECT_MEMBER], member
    assert "nobody is not a member of project 'vision'" in member[3]
    assert project_refused[:3] == ["refused", "PermissionDeniedError", reasons.NOT_PROJECT_MEMBER]
    assert class_refused[:3] == ["refused", "PermissionDeniedError", reasons.PRIORITY_NOT_ALLOWED]
    _, lease_id, user, identity, uid, pid, description = forged
    assert (user, identity, uid, description) == ("nobody", f"local:uid={NOBODY}", NOBODY, "forged")
    assert pid not in (0, 1)
    channel, admin = admin_stub(pool)
    with channel:
        leases = admin.ListAllLeases(admin_pb2.ListAllLeasesRequest(), timeout=10).leases
        assert [lease.id for lease in leases] == [lease_id]  # nothing granted for the refused tries
        assert admin.ListQueue(admin_pb2.ListQueueRequest(), timeout=10).entries == []
    # Once a member, the same request is granted.
    pool.set_quota("vision", deserved=1, members=["user:root", "user:nobody"])
    (granted,) = attacker(
        pool,
        "with vgpu.Pool(ep) as p:\n"
        "    emit(p.acquire(memory='1GiB', project='vision', priority='inference', wait=False).status)",
    )
    assert granted == "granted"


def test_lease_calls_need_the_owner_and_others_see_leases_without_owner_or_environment(shared_host: LocalPool) -> None:
    pool = shared_host
    with pool.pool() as root:
        mine = root.acquire(memory="1GiB", compute=0.1, wait=False, description="root's job")
        code = f"""
from vgpu.api.v1 import workload_pb2, workload_pb2_grpc
from vgpu._private.channels import authenticated_channel
with authenticated_channel(ep) as channel:
    stub = workload_pb2_grpc.WorkloadServiceStub(channel)
    for name, call, request in (
        ("release", stub.Release, workload_pb2.ReleaseRequest(lease_id={mine.id!r}, token={mine.token!r})),
        ("heartbeat", stub.Heartbeat, workload_pb2.HeartbeatRequest(lease_id={mine.id!r}, token={mine.token!r})),
        ("get", stub.GetLease, workload_pb2.GetLeaseRequest(lease_id={mine.id!r}, token={mine.token!r})),
    ):
        try:
            call(request, timeout=10)
            emit([name, "OK"])
        except grpc.RpcError as e:
            emit([name, e.code().name, e.details()])
    theirs = {{l.id: l for l in stub.ListLeases(workload_pb2.ListLeasesRequest(), timeout=10).leases}}[{mine.id!r}]
    emit(["listed", theirs.HasField("owner"), dict(theirs.env), theirs.state])
with vgpu.Pool(ep) as p:
    own = p.acquire(memory="1GiB", compute=0.1, wait=False)
    emit(["own", own.id, own.token])
    listed = {{l.id: l for l in p.leases()}}
    emit(["own-listed", listed[own.id].owner.user, listed[{mine.id!r}].owner.user])
"""
        results = attacker(pool, "import grpc\n" + code)
        assert results[0][:2] == ["release", "PERMISSION_DENIED"]
        assert "belongs to another user" in results[0][2]
        assert results[1][:2] == ["heartbeat", "PERMISSION_DENIED"]
        assert results[2][:2] == ["get", "PERMISSION_DENIED"]
        assert results[3][:3] == ["listed", False, {}]
        _, own_id, own_token = results[4]
        assert results[5][1:] == ["nobody", ""]
        assert root.get_lease(mine.id, mine.token).state == "granted"
        # root, an admin, may act on nobody's lease (and it is audited); its owner still sees it in full
        info = root.get_lease(own_id, own_token)
        assert (info.owner.user, info.owner.uid) == ("nobody", NOBODY)
        channel = authenticated_channel(pool.endpoint)
        with channel:
            workload_pb2_grpc.WorkloadServiceStub(channel).Release(
                workload_pb2.ReleaseRequest(lease_id=own_id, token=own_token), timeout=10
            )
        mine.release()
    audit_records(
        pool,
        "--identity",
        "root",
        until=lambda rs: any(r["method"] == "WorkloadService/Release" and r["target"] == f"lease={own_id}" for r in rs),
    )
    refused = audit_records(pool, "--identity", "nobody")
    assert {r["reason"] for r in refused} == {reasons.NOT_LEASE_OWNER}


def test_forged_expired_and_foreign_credentials_are_refused(shared_host: LocalPool) -> None:
    pool = shared_host
    key = CredentialKey.load_or_create(pool.state_dir / "auth" / "credential.key")  # root reads the daemon's key
    expired = key.mint(0, (0,), 1, time.time() - 1)
    foreign = CredentialKey(os.urandom(32)).mint(0, (0,), 1, time.time() + 60)
    code = f"""
import grpc
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc
from vgpu._private.local_credential import fetch
path = __import__("pathlib").Path({str(credential_socket_path(pool.socket_path))!r})
own, _ = fetch(path, 5)
parts = own.split(".")
as_root = ".".join([parts[0], parts[1], "0", "0", *parts[4:]])
with grpc.insecure_channel(ep, options=[("grpc.default_authority", "localhost")]) as channel:
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    for name, metadata in (
        ("none", ()),
        ("as-root", (({METADATA_KEY!r}, as_root),)),
        ("expired", (({METADATA_KEY!r}, {expired!r}),)),
        ("foreign", (({METADATA_KEY!r}, {foreign!r}),)),
        ("garbage", (({METADATA_KEY!r}, "x" * 5000),)),
        ("own-drain", (({METADATA_KEY!r}, own),)),
    ):
        try:
            stub.DrainNode(admin_pb2.DrainNodeRequest(node={pool.node_name!r}), timeout=10, metadata=metadata)
            emit([name, "OK", ""])
        except grpc.RpcError as e:
            emit([name, e.code().name, e.details()])
"""
    results = {name: (code, details) for name, code, details in attacker(pool, code)}
    assert results["none"][0] == "UNAUTHENTICATED"
    assert "no vgpu credential" in results["none"][1]
    assert results["as-root"] == (
        "UNAUTHENTICATED",
        "the vgpu credential was refused: its signature does not match (altered or forged)",
    )
    assert results["expired"][0] == "UNAUTHENTICATED"
    assert "expired" in results["expired"][1]
    assert results["foreign"][0] == "UNAUTHENTICATED"
    assert "another vgpud" in results["foreign"][1]
    assert results["garbage"] == ("UNAUTHENTICATED", "the vgpu credential was refused: it is not a vgpu credential")
    assert results["own-drain"][0] == "PERMISSION_DENIED"
    channel, admin = admin_stub(pool)
    with channel:
        assert admin.ListNodes(admin_pb2.ListNodesRequest(), timeout=10).nodes[0].state == types_pb2.NODE_STATE_READY
    expected = {
        reasons.CREDENTIAL_MISSING,
        reasons.CREDENTIAL_INVALID,
        reasons.CREDENTIAL_EXPIRED,
        reasons.ROLE_NOT_ALLOWED,
    }
    refused = audit_records(pool, "--since", "10m", until=lambda rs: {r.get("reason") for r in rs} >= expected)
    assert {r["reason"] for r in refused} >= {
        reasons.CREDENTIAL_MISSING,
        reasons.CREDENTIAL_INVALID,
        reasons.CREDENTIAL_EXPIRED,
        reasons.ROLE_NOT_ALLOWED,
    }
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{pool.metrics_port}/metrics", timeout=10).read().decode()  # type: ignore[attr-defined]
    for reason in (reasons.CREDENTIAL_MISSING, reasons.CREDENTIAL_INVALID, reasons.CREDENTIAL_EXPIRED):
        labels = f'method="AdminService/DrainNode",node="{pool.node_name}",reason="{reason}"'
        assert f"vgpu_auth_refusals_total{{{labels}}}" in scraped
    anonymous = [r for r in refused if r["reason"] == reasons.CREDENTIAL_MISSING]
    assert anonymous[0]["peer"].startswith("unix:")
    assert not anonymous[0].get("user")


def test_members_of_an_admin_group_are_admins(tmp_path: Path) -> None:
    try:
        group = grp.getgrgid(NOBODY).gr_name
    except KeyError:
        pytest.skip(f"gid {NOBODY} has no group name on this host")
    state = Path(tempfile.mkdtemp(prefix="vgpu-", dir="/tmp"))
    state.chmod(0o755)
    args = config_args(state, f'[auth]\nadmin_groups = ["{group}"]\n')
    with local_pool("h100-80gb:1", state_dir=state, extra_args=args) as pool:
        (as_admin,) = attacker(pool, f"emit(vgpuctl('--endpoint', ep, 'drain', {pool.node_name!r}))", gids=(NOBODY,))
        assert as_admin[0] == 0, as_admin
        (not_admin,) = run_as(
            NOBODY,
            (NOBODY - 1,),
            f"emit(vgpuctl('--endpoint', {pool.endpoint!r}, 'drain', {pool.node_name!r}, '--undo'))",
        )
        assert not_admin[0] == 1
        assert "ROLE_NOT_ALLOWED" in not_admin[2]


def test_every_served_method_is_in_the_authorization_table(shared_host: LocalPool) -> None:
    """Reflection on the live daemon lists what it serves; each method must have a rule (deny by default)."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from vgpud._private.auth.rules import RULES

    channel = authenticated_channel(shared_host.endpoint)
    with channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        listed = next(
            iter(
                stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
            )
        )
        services = [s.name for s in listed.list_services_response.service]
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    import grpc_health.v1.health_pb2  # noqa: F401 -- registers the health descriptors

    import vgpud._private.services.reflection  # noqa: F401 -- registers grpc.reflection.v1

    methods = {f"{name}/{m.name}" for name in services for m in pool.FindServiceByName(name).methods}
    assert methods, services
    assert methods <= set(RULES), methods - set(RULES)


def test_the_sdk_fetches_a_new_credential_when_the_daemon_key_changed(shared_host: LocalPool) -> None:
    """A wiped state dir gives the daemon a new key: held credentials are refused, and clients recover alone."""
    pool = shared_host
    with pool.pool() as client:
        before = client.acquire(memory="1GiB", compute=0.1, wait=False, ttl=60)
        pool.stop()
        (pool.state_dir / "auth" / "credential.key").unlink()
        pool.start()

        def state() -> str | None:
            """The lease's state once the client reaches the new daemon (its channel may sit out a reconnect
            backoff: the lease's event stream tried to reach the daemon while it was down)."""
            try:
                return client.get_lease(before.id, before.token).state  # refused once, renewed, retried
            except vgpu.DaemonUnavailableError:
                return None

        assert wait_until(state, timeout=10, what="the client to reconnect") == "granted"
        after = client.acquire(memory="1GiB", compute=0.1, wait=False)
        assert after.status == "granted"
    assert "the vgpu credential was refused: it was minted by another vgpud" in "\n".join(
        line for line in pool.log_tail(400).splitlines() if "audit" in line
    )

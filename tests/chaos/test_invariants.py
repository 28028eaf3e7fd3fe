"""The invariant checker against hand-built etcd contents: a clean pool passes, and each breach is caught.

Each case starts from the same clean pool and breaks exactly one rule, so a check that stopped working
(or one that fired on healthy contents) fails here rather than silently passing a chaos run.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest

from tests.chaos.invariants import (
    BAD_END,
    DAEMON_DISAGREES,
    LOST_LEASE,
    MISSING_CLAIM,
    NOT_IDLE,
    ORPHAN_CLAIM,
    OVER_COMMIT,
    RELEASE_LOST,
    UNREADABLE,
    ClientView,
    Report,
    check_pool,
    kind_of,
)
from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2, types_pb2
from vgpud._private.core.model import (
    Claim,
    GpuMode,
    GpuRecord,
    GpuState,
    Isolation,
    LeaseRecord,
    LeaseState,
    Owner,
    ShapeRequest,
    SliceRecord,
)
from vgpud._private.registry import Keys
from vgpud._private.store.base import Put
from vgpud._private.store.etcd_store import EtcdStore

GiB = 1024**3
CLUSTER = "chaos-unit"
KEYS = Keys(CLUSTER)
GPU_MEMORY = 80 * GiB


def gpu(uuid: str) -> GpuRecord:
    return GpuRecord(
        uuid=uuid,
        node="n1",
        index=int(uuid[-1]),
        model="h100-80gb",
        name="NVIDIA H100 80GB HBM3",
        memory_bytes=GPU_MEMORY,
        sm_count=132,
        mig_capable=True,
        mig_enabled=False,
        backend="sim",
    )


def lease(
    lease_id: str,
    slices: list[tuple[str, int, int, Isolation]],
    state: LeaseState = LeaseState.GRANTED,
    *,
    end_reason: str = "",
    ended_at: float = 0.0,
) -> LeaseRecord:
    isolation = slices[0][3] if slices else Isolation.SHARED
    return LeaseRecord(
        id=lease_id,
        token_sha256="0" * 64,
        state=state,
        node="n1",
        project="",
        priority="",
        owner=Owner(),
        request=ShapeRequest(isolation, slices[0][1] if slices else GiB, slices[0][2] if slices else 100),
        slices=tuple(
            SliceRecord("n1", uuid, int(uuid[-1]), "h100-80gb", iso, memory, compute)
            for uuid, memory, compute, iso in slices
        ),
        created_at=900.0,
        ttl_seconds=4,
        liveness_lease=1,
        end_reason=end_reason,
        ended_at=ended_at,
    )


@dataclass
class Pool:
    """Hand-built contents of one cluster plus what its clients saw; a case edits one thing."""

    gpus: dict[str, GpuRecord] = field(default_factory=dict)
    states: dict[str, GpuState] = field(default_factory=dict)
    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    raw: dict[str, bytes] = field(default_factory=dict)
    granted: dict[str, ClientView] = field(default_factory=dict)

    def claim(self, uuid: str, claim: Claim) -> None:
        self.states[uuid] = self.states[uuid].with_claim(claim)

    def add_live(self, lease_id: str, uuid: str, memory: int, compute: int) -> None:
        """A consistent live lease (record, claim, alive key) nobody saw granted."""
        self.leases[lease_id] = lease(lease_id, [(uuid, memory, compute, Isolation.SHARED)])
        self.claim(uuid, Claim(lease_id, memory, compute))
        self.alive.add(lease_id)

    def kvs(self) -> dict[str, bytes]:
        out = {KEYS.gpu(u): g.to_json() for u, g in self.gpus.items()}
        out |= {KEYS.gpustate(u): s.to_json() for u, s in self.states.items()}
        out |= {KEYS.lease(i): r.to_json() for i, r in self.leases.items()}
        out |= {KEYS.alive(i): b"" for i in self.alive}
        return out | self.raw


def clean_pool() -> Pool:
    """Two GPUs: a shared live lease, a whole live lease, and three ended ones (released, expired, revoked)."""
    pool = Pool(gpus={"gpu-0": gpu("gpu-0"), "gpu-1": gpu("gpu-1")}, states={"gpu-0": GpuState(), "gpu-1": GpuState()})
    pool.leases["L1"] = lease("L1", [("gpu-0", 4 * GiB, 100, Isolation.SHARED)])
    pool.claim("gpu-0", Claim("L1", 4 * GiB, 100))
    pool.leases["L2"] = lease("L2", [("gpu-1", GPU_MEMORY, 1000, Isolation.WHOLE)])
    pool.claim("gpu-1", Claim("L2", GPU_MEMORY, 1000, Isolation.WHOLE))
    pool.alive |= {"L1", "L2"}
    shared = [("gpu-0", 4 * GiB, 100, Isolation.SHARED)]
    pool.leases["L3"] = lease("L3", shared, LeaseState.RELEASED, end_reason=reasons.END_RELEASED, ended_at=1000.0)
    pool.leases["L4"] = lease("L4", shared, LeaseState.EXPIRED, end_reason=reasons.END_EXPIRED, ended_at=1000.0)
    pool.leases["L5"] = lease("L5", shared, LeaseState.REVOKED, end_reason=reasons.END_EVICTED, ended_at=1000.0)
    pool.granted = {
        "L1": ClientView("L1"),
        "L2": ClientView("L2"),
        "L3": ClientView("L3", released_at=1001.0, release_state="released"),
        # Expired before its client got round to releasing: the daemon answered with that earlier end.
        "L4": ClientView("L4", released_at=1002.0, release_state="expired"),
        "L5": ClientView("L5"),
    }
    # A record of another cluster and keys this checker does not know must not disturb it.
    pool.raw["/vgpu/other/gpustate/gpu-9"] = b"not json"
    pool.raw[KEYS.root + "leader/election"] = b"whatever"
    return pool


def without_claim(pool: Pool, uuid: str, lease_id: str) -> None:
    pool.states[uuid] = pool.states[uuid].without_lease(lease_id)


def reshape_claim(pool: Pool, uuid: str, lease_id: str, memory: int) -> None:
    without_claim(pool, uuid, lease_id)
    pool.claim(uuid, Claim(lease_id, memory, 100))


def released_view(pool: Pool, lease_id: str, at: float, state: str) -> None:
    pool.granted[lease_id] = ClientView(lease_id, released_at=at, release_state=state)


# Each case: (edit of the clean pool, the violation kinds it must produce, a phrase one line must contain).
Edit = Callable[[Pool], object]
CASES: dict[str, tuple[Edit, set[str], str]] = {
    "memory over-commit": (lambda p: p.add_live("L6", "gpu-0", 77 * GiB, 100), {OVER_COMMIT}, "GiB claimed"),
    "compute over-commit": (lambda p: p.add_live("L6", "gpu-0", GiB, 950), {OVER_COMMIT}, "1050 milli-GPU"),
    "whole GPU shared": (lambda p: p.add_live("L6", "gpu-1", GiB, 0), {OVER_COMMIT}, "held whole by L2"),
    "shared claim on exclusive GPU": (
        lambda p: p.states.update({"gpu-0": replace(p.states["gpu-0"], mode=GpuMode.EXCLUSIVE)}),
        {OVER_COMMIT},
        "exclusive mode",
    ),
    "claim without lease record": (lambda p: p.claim("gpu-0", Claim("L9", GiB, 10)), {ORPHAN_CLAIM}, "no lease record"),
    "claim of ended lease": (
        lambda p: p.claim("gpu-0", Claim("L3", 4 * GiB, 100)),
        {ORPHAN_CLAIM},
        "ended as released",
    ),
    "claim on unregistered GPU": (
        lambda p: p.states.update({"gpu-7": GpuState(claims=(Claim("L1", GiB, 10),))}),
        {ORPHAN_CLAIM},
        "gpus/gpu-7 does not exist",
    ),
    "claim unlike its slice": (
        lambda p: reshape_claim(p, "gpu-0", "L1", 5 * GiB),
        {ORPHAN_CLAIM, MISSING_CLAIM},
        "matches none of the lease's slices",
    ),
    "slice without claim": (lambda p: without_claim(p, "gpu-0", "L1"), {MISSING_CLAIM}, "live lease L1"),
    "granted lease missing": (lambda p: p.leases.pop("L5"), {LOST_LEASE}, "lease L5 was granted"),
    "ended without reason": (
        lambda p: p.leases.update({"L5": replace(p.leases["L5"], end_reason="")}),
        {BAD_END},
        "end_reason=''",
    ),
    "released but still live": (lambda p: released_view(p, "L1", 1001.0, "released"), {RELEASE_LOST}, "still shows"),
    "released, ended later": (lambda p: released_view(p, "L4", 999.0, "expired"), {RELEASE_LOST}, "later"),
    "confirmed release, other end": (
        lambda p: released_view(p, "L4", 1002.0, "released"),
        {RELEASE_LOST},
        "confirmed the release",
    ),
    "unparsable record": (lambda p: p.raw.update({KEYS.lease("bad"): b"{"}), {UNREADABLE}, "leases/bad"),
}


class FakeAdmin:
    """A daemon's ListGpus as a test dictates it: etcd's allocation, optionally edited afterwards."""

    def __init__(self) -> None:
        self.gpus: list[types_pb2.Gpu] = []

    def show(self, pool: Pool) -> None:
        self.gpus = [
            types_pb2.Gpu(
                uuid=uuid,
                node=record.node,
                memory_bytes=record.memory_bytes,
                allocated=types_pb2.GpuAllocation(
                    memory_bytes=pool.states[uuid].memory_claimed,
                    compute_milli=pool.states[uuid].compute_claimed,
                    slices=len(pool.states[uuid].claims),
                ),
            )
            for uuid, record in pool.gpus.items()
        ]

    async def list_gpus(
        self, request: admin_pb2.ListGpusRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> admin_pb2.ListGpusResponse:
        return admin_pb2.ListGpusResponse(gpus=self.gpus)

    def handler(self) -> grpc.GenericRpcHandler:
        """Only ListGpus of AdminService: all the checker asks a daemon."""
        return grpc.method_handlers_generic_handler(
            "vgpu.api.v1.AdminService",
            {
                "ListGpus": grpc.unary_unary_rpc_method_handler(
                    self.list_gpus,
                    request_deserializer=admin_pb2.ListGpusRequest.FromString,
                    response_serializer=admin_pb2.ListGpusResponse.SerializeToString,
                )
            },
        )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds 107 bytes; pytest's tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="vgpu-chaos-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def fake_daemon(short_dir: Path) -> AsyncIterator[tuple[str, FakeAdmin]]:
    """A gRPC server on a unix socket that answers AdminService.ListGpus like a daemon would."""
    servicer = FakeAdmin()
    server = grpc.aio.server(handlers=[servicer.handler()])
    endpoint = f"unix://{short_dir / 'admin.sock'}"
    server.add_insecure_port(endpoint)
    await server.start()
    try:
        yield endpoint, servicer
    finally:
        await server.stop(None)


async def check(
    store: EtcdStore, pool: Pool, daemons: list[str] | None = None, *, expect_idle: bool = False, settle: float = 0.5
) -> Report:
    await store.txn([], [Put(k, v) for k, v in pool.kvs().items()], timeout=5)
    return await check_pool(
        store, CLUSTER, granted=pool.granted, daemons=daemons or [], expect_idle=expect_idle, settle_timeout=settle
    )


async def test_clean_pool_has_no_violations(etcd_store: EtcdStore, fake_daemon: tuple[str, FakeAdmin]) -> None:
    endpoint, admin = fake_daemon
    pool = clean_pool()
    admin.show(pool)
    report = await check(etcd_store, pool, [endpoint])
    assert report.violations == ()
    assert report.ok
    assert (report.gpus, report.claims, report.daemons_checked) == (2, 2, 1)
    assert report.lease_states == {"granted": 2, "released": 1, "expired": 1, "revoked": 1}


@pytest.mark.parametrize("case", list(CASES))
async def test_each_violation_is_detected(etcd_store: EtcdStore, case: str) -> None:
    edit, kinds, phrase = CASES[case]
    pool = clean_pool()
    edit(pool)
    report = await check(etcd_store, pool)
    assert {kind_of(v) for v in report.violations} == kinds, report.violations
    assert any(phrase in v for v in report.violations), report.violations
    assert not report.ok


async def test_live_lease_or_waiting_request_breaks_idle_pool(etcd_store: EtcdStore) -> None:
    pool = clean_pool()
    pool.alive.discard("L2")
    pool.raw[KEYS.root + "queue/L7"] = b"{}"
    report = await check(etcd_store, pool, expect_idle=True)
    assert [kind_of(v) for v in report.violations] == [NOT_IDLE, NOT_IDLE, NOT_IDLE]
    assert "alive/L1 present" in report.violations[0]
    assert "alive/L2 absent" in report.violations[1]
    assert "queue/L7 still waits" in report.violations[2]


async def test_idle_pool_passes_the_idle_check(etcd_store: EtcdStore) -> None:
    pool = clean_pool()
    for lease_id, uuid in (("L1", "gpu-0"), ("L2", "gpu-1")):
        pool.leases[lease_id] = pool.leases[lease_id].ended_as(LeaseState.RELEASED, reasons.END_RELEASED, "", 1000.0)
        without_claim(pool, uuid, lease_id)
    pool.alive.clear()
    report = await check(etcd_store, pool, expect_idle=True)
    assert report.violations == ()


async def test_daemon_with_other_allocation_disagrees(
    etcd_store: EtcdStore, fake_daemon: tuple[str, FakeAdmin]
) -> None:
    endpoint, admin = fake_daemon
    pool = clean_pool()
    admin.show(pool)
    admin.gpus[0].allocated.compute_milli += 100
    report = await check(etcd_store, pool, [endpoint])
    (violation,) = report.violations
    assert kind_of(violation) == DAEMON_DISAGREES
    assert "gpu-0 with 4294967296 B / 200 milli" in violation


async def test_daemon_missing_a_gpu_disagrees(etcd_store: EtcdStore, fake_daemon: tuple[str, FakeAdmin]) -> None:
    endpoint, admin = fake_daemon
    pool = clean_pool()
    admin.show(pool)
    del admin.gpus[1]
    admin.gpus.append(types_pb2.Gpu(uuid="gpu-x"))
    report = await check(etcd_store, pool, [endpoint])
    assert [kind_of(v) for v in report.violations] == [DAEMON_DISAGREES, DAEMON_DISAGREES]
    assert "does not list GPU gpu-1" in report.violations[0]
    assert "lists GPU gpu-x, which etcd does not have" in report.violations[1]


async def test_silent_daemon_disagrees(etcd_store: EtcdStore, short_dir: Path) -> None:
    report = await check(etcd_store, clean_pool(), [f"unix://{short_dir / 'nobody.sock'}"])
    (violation,) = report.violations
    assert kind_of(violation) == DAEMON_DISAGREES
    assert "did not answer ListGpus: UNAVAILABLE" in violation

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
from typing import Any

import grpc
import pytest

from tests.chaos.invariants import (
    BAD_END,
    DAEMON_DISAGREES,
    LOST_LEASE,
    MIG_BAD_SLOT,
    MIG_DUPLICATE_UUID,
    MIG_MISSING,
    MIG_ORPHAN,
    MIG_OVER_MAX,
    MIG_OVERLAP,
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
from vgpud._private.backend.geometry import lookup_model
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.mig_records import MigRecord, MigSlot, MigState
from vgpud._private.core.mig_slices import compute_share
from vgpud._private.core.model import Claim, GpuMode, GpuRecord, GpuState, Isolation, LeaseState, Owner, ShapeRequest
from vgpud._private.registry import Keys
from vgpud._private.store.base import Put
from vgpud._private.store.etcd_store import EtcdStore

GiB = 1024**3
CLUSTER = "chaos-unit"
KEYS = Keys(CLUSTER)
GPU_MEMORY = 80 * GiB
H100 = lookup_model("h100-80gb")


def gpu(uuid: str, *, mig_enabled: bool = False) -> GpuRecord:
    return GpuRecord(
        uuid=uuid,
        node="n1",
        index=int(uuid[-1]),
        model="h100-80gb",
        name="NVIDIA H100 80GB HBM3",
        memory_bytes=GPU_MEMORY,
        sm_count=132,
        mig_capable=True,
        mig_enabled=mig_enabled,
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


MIG_GPU = "gpu-2"


def slot(profile: str, start: int) -> MigSlot:
    p = H100.mig_profile(profile)
    return MigSlot(p.name, p.id, start, p.memory_slices)


WARM_1G = MigRecord(slot("1g.10gb", 1), MigState.WARM, uuid="MIG-w", gpu_instance_id=9, idle_since=990.0)
"""The warm record of mig_pool() at slot 1, for cases that copy or reshape it."""


def mig_claim(lease_id: str, where: MigSlot) -> Claim:
    profile = H100.mig_profile(where.profile)
    return Claim(lease_id, profile.memory_bytes, compute_share(H100, profile), Isolation.MIG, where)


def add_mig_lease(pool: Pool, lease_id: str, where: MigSlot, mig_uuid: str = "") -> None:
    """A live MIG lease on MIG_GPU: its slice, its claim and the CREATING record (READY once it has a UUID)."""
    claim = mig_claim(lease_id, where)
    record = lease(lease_id, [(MIG_GPU, claim.memory_bytes, claim.compute_milli, Isolation.MIG)])
    (piece,) = record.slices
    made = replace(piece, mig_profile=where.profile, mig_start=where.start, mig_size=where.size, mig_uuid=mig_uuid)
    pool.leases[lease_id] = replace(record, request=replace(record.request, mig_profile=where.profile), slices=(made,))
    pool.claim(MIG_GPU, claim)
    if mig_uuid:
        booked = pool.states[MIG_GPU].mig_at(where.start)
        assert booked is not None
        ready = replace(booked, state=MigState.READY, uuid=mig_uuid, gpu_instance_id=where.start + 1)
        pool.states[MIG_GPU] = pool.states[MIG_GPU].with_mig_replaced(booked, ready)
    pool.alive.add(lease_id)
    pool.granted[lease_id] = ClientView(lease_id)


def mig_pool() -> Pool:
    """The clean pool plus a GPU in MIG mode holding one of each kind of MIG record, all consistent.

    Slots 0: 1g.10gb CREATING for M2; 1: 1g.10gb WARM; 2: 1g.10gb FOREIGN; 3: 1g.10gb RELEASING (of the
    released lease L3); 4-7: 3g.40gb READY for M1. Seven compute slices, no overlap: a full, valid layout.
    """
    pool = clean_pool()
    pool.gpus[MIG_GPU] = gpu(MIG_GPU, mig_enabled=True)
    pool.states[MIG_GPU] = GpuState(
        mode=GpuMode.MIG,
        mig=(
            WARM_1G,
            MigRecord(slot("1g.10gb", 2), MigState.FOREIGN, uuid="MIG-f", gpu_instance_id=10),
            MigRecord(slot("1g.10gb", 3), MigState.RELEASING, "L3", "MIG-r", 11),
        ),
    )
    add_mig_lease(pool, "M1", slot("3g.40gb", 4), "MIG-a")
    add_mig_lease(pool, "M2", slot("1g.10gb", 0))
    return pool


def set_mig(pool: Pool, start: int, new: MigRecord | None) -> None:
    """Swap the MIG record at `start` of MIG_GPU (None: drop it), bypassing every rule."""
    state = pool.states[MIG_GPU]
    old = state.mig_at(start)
    assert old is not None
    pool.states[MIG_GPU] = state.with_mig_replaced(old, new)


def add_mig(pool: Pool, record: MigRecord) -> None:
    """Add a MIG record to MIG_GPU, bypassing every rule."""
    state = pool.states[MIG_GPU]
    pool.states[MIG_GPU] = replace(state, mig=(*state.mig, record))


def edit_mig(pool: Pool, start: int, **changes: Any) -> None:
    old = pool.states[MIG_GPU].mig_at(start)
    assert old is not None
    set_mig(pool, start, replace(old, **changes))


def move_claim(pool: Pool, lease_id: str, where: MigSlot | None) -> None:
    """Point a lease's MIG claim at another slot (None: strip the slot), leaving records and slices alone."""
    state = pool.states[MIG_GPU]
    claims = tuple(replace(c, mig=where) if c.lease_id == lease_id else c for c in state.claims)
    pool.states[MIG_GPU] = replace(state, claims=claims)


def set_gpu(pool: Pool, uuid: str, **changes: Any) -> None:
    pool.gpus[uuid] = replace(pool.gpus[uuid], **changes)


def set_mode(pool: Pool, uuid: str, mode: GpuMode) -> None:
    pool.states[uuid] = replace(pool.states[uuid], mode=mode)


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


def two_me_instances(pool: Pool) -> None:
    """1g.10gb+me at slots 1 and 2: no overlap, but the profile allows one instance per GPU."""
    set_mig(pool, 1, replace(WARM_1G, slot=slot("1g.10gb+me", 1)))
    set_mig(pool, 2, MigRecord(slot("1g.10gb+me", 2), MigState.WARM, uuid="MIG-f"))


def misplaced_1g20(pool: Pool) -> None:
    """A 1g.20gb over slots 1-2 (the foreign instance there dropped): it may only start at 0, 2, 4 or 6."""
    set_mig(pool, 2, None)
    set_mig(pool, 1, replace(WARM_1G, slot=slot("1g.20gb", 1)))


def warm_copy_on_gpu_3(pool: Pool) -> None:
    """A second MIG GPU booking the warm instance of MIG_GPU under the same MIG UUID."""
    pool.gpus["gpu-3"] = gpu("gpu-3", mig_enabled=True)
    pool.states["gpu-3"] = GpuState(GpuMode.MIG, mig=(WARM_1G,))


# Each case breaks one MIG rule of mig_pool(); same shape as CASES.
MIG_CASES: dict[str, tuple[Edit, set[str], str]] = {
    "overlapping instances": (
        lambda p: add_mig(p, MigRecord(slot("2g.20gb", 2), MigState.WARM, uuid="MIG-x")),
        {MIG_OVERLAP},
        "2g.20gb (id 14) at slots 2-3 warm MIG-x over the same memory slices",
    ),
    "same start booked twice": (
        lambda p: add_mig(p, replace(WARM_1G, uuid="MIG-y")),
        {MIG_OVERLAP},
        "1g.10gb (id 19) at slots 1-1 warm MIG-w and 1g.10gb (id 19) at slots 1-1 warm MIG-y",
    ),
    "profile beyond its max instances": (
        two_me_instances,
        {MIG_OVER_MAX},
        "books 2 instances of 1g.10gb+me (id 20); at most 1 can exist",
    ),
    "start the profile does not allow": (
        misplaced_1g20,
        {MIG_BAD_SLOT},
        "1g.20gb starts only at [0, 2, 4, 6]",
    ),
    "slot unlike its profile id": (
        lambda p: edit_mig(p, 1, slot=MigSlot("1g.10gb", 15, 1, 1)),
        {MIG_BAD_SLOT},
        "no profile of the model",
    ),
    "held by an ended lease": (
        lambda p: edit_mig(p, 1, state=MigState.READY, lease_id="L4"),
        {MIG_ORPHAN},
        "but L4 ended as expired",
    ),
    "held by an unknown lease": (
        lambda p: edit_mig(p, 1, state=MigState.CREATING, lease_id="L99", uuid=""),
        {MIG_ORPHAN},
        "L99 has no lease record",
    ),
    "held by a live lease without a MIG claim there": (
        lambda p: edit_mig(p, 1, state=MigState.READY, lease_id="L1"),
        {MIG_ORPHAN},
        "L1 holds no MIG claim at that slot",
    ),
    "held by no lease at all": (
        lambda p: edit_mig(p, 1, state=MigState.READY, lease_id=""),
        {MIG_ORPHAN},
        "it names no lease",
    ),
    "claim at another slot than its record and slice": (
        lambda p: move_claim(p, "M2", slot("1g.10gb", 5)),
        {ORPHAN_CLAIM, MISSING_CLAIM, MIG_ORPHAN},
        "MIG 1g.10gb at slot 5) that matches none of the lease's slices",
    ),
    "MIG claim without a slot": (
        lambda p: move_claim(p, "M2", None),
        {ORPHAN_CLAIM, MISSING_CLAIM, MIG_ORPHAN, MIG_BAD_SLOT},
        "whose MIG slot does not match their kind",
    ),
    "slice without its record": (
        lambda p: set_mig(p, 0, None),
        {MIG_MISSING},
        "live lease M2 (granted) has a MIG slice 1g.10gb at slot 0 of GPU gpu-2 (uuid not yet) but gpustate/gpu-2",
    ),
    "slice whose record was released": (
        lambda p: edit_mig(p, 4, state=MigState.RELEASING),
        {MIG_MISSING},
        "3g.40gb (id 9) at slots 4-7 releasing of M1 MIG-a",
    ),
    "slice naming another instance": (
        lambda p: edit_mig(p, 4, uuid="MIG-other"),
        {MIG_MISSING},
        "(uuid MIG-a) but the record there is 3g.40gb (id 9) at slots 4-7 ready of M1 MIG-other",
    ),
    "slice with a UUID, record still creating": (
        lambda p: edit_mig(p, 4, state=MigState.CREATING),
        {MIG_MISSING},
        "creating of M1 MIG-a",
    ),
    "record ready, slice never given the UUID": (
        lambda p: edit_mig(p, 0, state=MigState.READY, uuid="MIG-b"),
        {MIG_MISSING},
        "never given its UUID",
    ),
    "one MIG UUID booked twice": (
        lambda p: edit_mig(p, 1, uuid="MIG-a"),
        {MIG_DUPLICATE_UUID},
        "MIG instance MIG-a is booked 2 times: gpu-2 slot 1, gpu-2 slot 4",
    ),
    "one MIG UUID on two GPUs": (
        warm_copy_on_gpu_3,
        {MIG_DUPLICATE_UUID},
        "MIG instance MIG-w is booked 2 times: gpu-2 slot 1, gpu-3 slot 1",
    ),
    "MIG claims on a GPU switched to shared": (
        lambda p: set_mode(p, MIG_GPU, GpuMode.SHARED),
        {OVER_COMMIT},
        "is in shared mode but has MIG claims of ['M1', 'M2']",
    ),
    "shared claim while the hardware is still in MIG": (
        lambda p: set_gpu(p, "gpu-0", mig_enabled=True),
        {OVER_COMMIT},
        "shared or whole claims of ['L1'] while MIG is still on it",
    ),
    "shared claim beside MIG records": (
        lambda p: p.states.update({"gpu-0": replace(p.states["gpu-0"], mig=(replace(WARM_1G, uuid="MIG-z"),))}),
        {OVER_COMMIT},
        "1 MIG instance record(s)",
    ),
    "whole GPU in MIG mode": (
        lambda p: set_mode(p, "gpu-1", GpuMode.MIG),
        {OVER_COMMIT},
        "is in mig mode but is held whole by ['L2']",
    ),
    "MIG instances on a model without MIG": (
        lambda p: set_gpu(p, MIG_GPU, model="l4-24gb"),
        {MIG_BAD_SLOT},
        "is a l4-24gb, which has no MIG",
    ),
    "MIG instances on an unregistered GPU": (
        lambda p: p.states.update({"gpu-5": GpuState(GpuMode.MIG, mig=(replace(WARM_1G, uuid="MIG-z"),))}),
        {MIG_ORPHAN},
        "gpustate/gpu-5 books 1 MIG instance(s) but gpus/gpu-5 does not exist",
    ),
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


async def test_clean_mig_pool_has_no_violations(etcd_store: EtcdStore, fake_daemon: tuple[str, FakeAdmin]) -> None:
    endpoint, admin = fake_daemon
    pool = mig_pool()
    admin.show(pool)
    report = await check(etcd_store, pool, [endpoint])
    assert report.violations == ()
    assert (report.gpus, report.claims) == (3, 4)
    assert report.lease_states == {"granted": 4, "released": 1, "expired": 1, "revoked": 1}


@pytest.mark.parametrize(
    "layout",
    [[slot("1g.10gb", i) for i in range(7)], [slot("4g.40gb", 0), slot("3g.40gb", 4)], [slot("7g.80gb", 0)]],
    ids=["7x1g.10gb", "4g+3g", "7g"],
)
async def test_full_mig_layouts_stay_within_the_gpu(etcd_store: EtcdStore, layout: list[MigSlot]) -> None:
    """The memory and compute sums count MIG claims too; the fullest layouts stay within them."""
    pool = clean_pool()
    pool.gpus[MIG_GPU] = gpu(MIG_GPU, mig_enabled=True)
    pool.states[MIG_GPU] = GpuState(mode=GpuMode.MIG)
    for n, where in enumerate(layout):
        add_mig_lease(pool, f"M{n}", where, f"MIG-{n}")
    report = await check(etcd_store, pool)
    assert report.violations == ()
    assert len(pool.states[MIG_GPU].claims) == len(layout)
    assert pool.states[MIG_GPU].memory_claimed <= GPU_MEMORY
    assert pool.states[MIG_GPU].compute_claimed <= 1000


@pytest.mark.parametrize("case", list(MIG_CASES))
async def test_each_mig_violation_is_detected(etcd_store: EtcdStore, case: str) -> None:
    edit, kinds, phrase = MIG_CASES[case]
    pool = mig_pool()
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

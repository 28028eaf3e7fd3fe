"""What no crash may break, checked from every key under `/vgpu/<cluster>/` and from the daemons' own views.

Fault injection only finds bugs through what it checks afterwards, so each rule here is stated once and
each breach comes back as one readable line that names the kind of violation, the keys and the numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import grpc

from vgpu._private.local_credential import CredentialError, LocalCredential, socket_of
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.mig_records import MigRecord, MigSlot, MigState, overlapping
from vgpud._private.core.mig_slices import model_of
from vgpud._private.core.model import Claim, GpuMode, GpuRecord, GpuState, Isolation, LeaseState
from vgpud._private.registry import Keys
from vgpud._private.store.base import Store

MILLI_PER_GPU: Final = 1000
STORE_TIMEOUT: Final = 5.0
RPC_TIMEOUT: Final = 3.0
_POLL_S: Final = 0.2

# Every violation line starts with one of these, so a reader (and a test) can tell the kinds apart.
OVER_COMMIT: Final = "over-commit"
ORPHAN_CLAIM: Final = "orphan claim"
MISSING_CLAIM: Final = "missing claim"
LOST_LEASE: Final = "lost lease"
BAD_END: Final = "bad end"
RELEASE_LOST: Final = "release not honoured"
NOT_IDLE: Final = "not idle"
DAEMON_DISAGREES: Final = "daemon disagrees"
UNREADABLE: Final = "unreadable record"
MIG_OVERLAP: Final = "mig overlap"
MIG_OVER_MAX: Final = "mig over max"
MIG_BAD_SLOT: Final = "bad mig slot"
MIG_ORPHAN: Final = "orphan mig instance"
MIG_MISSING: Final = "missing mig instance"
MIG_DUPLICATE_UUID: Final = "duplicate mig uuid"
KINDS: Final = (
    OVER_COMMIT,
    ORPHAN_CLAIM,
    MISSING_CLAIM,
    LOST_LEASE,
    BAD_END,
    RELEASE_LOST,
    NOT_IDLE,
    DAEMON_DISAGREES,
    UNREADABLE,
    MIG_OVERLAP,
    MIG_OVER_MAX,
    MIG_BAD_SLOT,
    MIG_ORPHAN,
    MIG_MISSING,
    MIG_DUPLICATE_UUID,
)


def kind_of(violation: str) -> str:
    """The kind a violation line starts with ('' for a line this module did not write)."""
    return next((k for k in KINDS if violation.startswith(k + ":")), "")


@dataclass(frozen=True, slots=True)
class ClientView:
    """What one client saw of one lease: that it was granted, and whether the daemon confirmed its release.

    `released_at` is the wall-clock time (time.time, the daemon's clock too) at which `release()` returned
    after a daemon answered it; None when the client never released (it abandoned the lease, or lost it
    while the daemon was unreachable, so nothing reached the daemon). `release_state` is the lease state
    that answer showed: "released", or the earlier end the daemon reported ("" when it only said "ended").
    """

    lease_id: str
    released_at: float | None = None
    release_state: str = ""


@dataclass(frozen=True, slots=True)
class PoolContents:
    """Everything of one cluster in etcd, parsed, as read at one revision."""

    revision: int
    gpus: dict[str, GpuRecord]
    states: dict[str, GpuState]
    leases: dict[str, LeaseRecord]
    alive: frozenset[str]
    queued: frozenset[str]
    """Lease ids of requests still waiting in the pool-wide queue (queue/<id>)."""
    unreadable: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Report:
    """The violations found (empty when every invariant holds) and what was looked at, for the summary."""

    violations: tuple[str, ...]
    revision: int
    gpus: int
    claims: int
    lease_states: dict[str, int]
    daemons_checked: int

    @property
    def ok(self) -> bool:
        """True when no invariant was broken."""
        return not self.violations

    def describe(self) -> str:
        """One line on what the checker saw."""
        states = ", ".join(f"{s}={n}" for s, n in sorted(self.lease_states.items())) or "none"
        return (
            f"etcd revision {self.revision}: {self.gpus} GPUs, {self.claims} claims, leases {states}; "
            f"{self.daemons_checked} daemon view(s) compared"
        )


async def read_contents(store: Store, cluster: str) -> PoolContents:
    """Read and parse every key under `/vgpu/<cluster>/` at one revision; unparsable records are listed."""
    keys = Keys(cluster)
    snapshot = await store.get_prefix(keys.root, timeout=STORE_TIMEOUT)
    gpus: dict[str, GpuRecord] = {}
    states: dict[str, GpuState] = {}
    leases: dict[str, LeaseRecord] = {}
    alive: set[str] = set()
    queued: set[str] = set()
    unreadable: list[str] = []
    for kv in snapshot.kvs:
        where = keys.split(kv.key)
        if where is None:
            continue
        kind, name = where
        try:
            if kind == "gpus":
                gpus[name] = GpuRecord.from_json(kv.value)
            elif kind == "gpustate":
                states[name] = GpuState.from_json(kv.value)
            elif kind == "leases":
                leases[name] = LeaseRecord.from_json(kv.value)
            elif kind == "alive":
                alive.add(name)
            elif kind == "queue":
                queued.add(name)
        except (ValueError, KeyError, TypeError) as exc:
            unreadable.append(f"{UNREADABLE}: {kv.key} does not parse ({type(exc).__name__}: {exc})")
    return PoolContents(snapshot.revision, gpus, states, leases, frozenset(alive), frozenset(queued), tuple(unreadable))


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def capacity_violations(pool: PoolContents) -> list[str]:
    """Per GPU: claimed memory and compute within the GPU, a whole-GPU claim alone, claims fit the mode.

    MIG claims count in the sums like any other: every layout the MIG rules allow books at most the GPU's
    memory and 1000 milli (each profile's memory and SM share, summed over the fullest layouts of every model
    in the geometry table), so a sum beyond the GPU is a breach whatever the claims' kind. Whether the MIG
    instances themselves fit together is `mig_violations`' part.
    """
    out: list[str] = []
    for uuid, state in sorted(pool.states.items()):
        if not state.claims:
            continue
        record = pool.gpus.get(uuid)
        if record is None:
            holders = sorted({c.lease_id for c in state.claims})
            out.append(f"{ORPHAN_CLAIM}: gpustate/{uuid} holds claims of {holders} but gpus/{uuid} does not exist")
            continue
        if state.memory_claimed > record.memory_bytes:
            out.append(
                f"{OVER_COMMIT}: GPU {uuid} ({record.node}) has {_gib(state.memory_claimed)} claimed of "
                f"{_gib(record.memory_bytes)} by {[(c.lease_id, c.memory_bytes) for c in state.claims]}"
            )
        if state.compute_claimed > MILLI_PER_GPU:
            out.append(
                f"{OVER_COMMIT}: GPU {uuid} ({record.node}) has {state.compute_claimed} milli-GPU claimed of "
                f"{MILLI_PER_GPU} by {[(c.lease_id, c.compute_milli) for c in state.claims]}"
            )
        whole = [c.lease_id for c in state.claims if c.isolation is Isolation.WHOLE]
        if whole and len(state.claims) > 1:
            others = [c.lease_id for c in state.claims if c.lease_id != whole[0]]
            out.append(f"{OVER_COMMIT}: GPU {uuid} is held whole by {whole[0]} but also claimed by {others}")
        out += _mode_violations(uuid, record, state)
    return out


def _mode_violations(uuid: str, record: GpuRecord, state: GpuState) -> list[str]:
    """Claims that do not fit the GPU's mode.

    Shared claims in shared mode only, MIG claims in MIG mode only, whole ones never in MIG mode, and no
    shared or whole claim while MIG is still on the hardware or instances are still booked (placement keeps
    off such a GPU until its node daemon has destroyed them and switched MIG off).
    """
    out: list[str] = []
    shared = [c.lease_id for c in state.claims if c.isolation is Isolation.SHARED]
    if shared and state.mode is not GpuMode.SHARED:
        out.append(f"{OVER_COMMIT}: GPU {uuid} is in {state.mode.value} mode but has shared claims of {shared}")
    mig = [c.lease_id for c in state.claims if c.isolation is Isolation.MIG]
    if mig and state.mode is not GpuMode.MIG:
        out.append(f"{OVER_COMMIT}: GPU {uuid} is in {state.mode.value} mode but has MIG claims of {mig}")
    whole = [c.lease_id for c in state.claims if c.isolation is Isolation.WHOLE]
    if whole and state.mode is GpuMode.MIG:
        out.append(f"{OVER_COMMIT}: GPU {uuid} is in mig mode but is held whole by {whole}")
    plain = shared + whole
    if plain and (record.mig_enabled or state.mig):
        out.append(
            f"{OVER_COMMIT}: GPU {uuid} has shared or whole claims of {plain} while MIG is still on it "
            f"(hardware mig_enabled={record.mig_enabled}, {len(state.mig)} MIG instance record(s))"
        )
    slotless = [c.lease_id for c in state.claims if (c.isolation is Isolation.MIG) != (c.mig is not None)]
    if slotless:
        out.append(f"{MIG_BAD_SLOT}: GPU {uuid} has claims of {slotless} whose MIG slot does not match their kind")
    return out


_Share = tuple[str, int, int, Isolation, tuple[str, int, int] | tuple[()]]
"""What a claim and its slice must agree on: GPU, memory, compute, kind, and (profile, start, size) for MIG."""


def claim_violations(pool: PoolContents) -> list[str]:
    """Claims and live leases match one to one: each claim is a slice of a live lease, each slice has its claim."""
    out: list[str] = []
    claims_of: dict[str, Counter[_Share]] = {}
    for uuid, state in sorted(pool.states.items()):
        for c in state.claims:
            lease = pool.leases.get(c.lease_id)
            if lease is None:
                out.append(f"{ORPHAN_CLAIM}: GPU {uuid} holds a claim of {c.lease_id}, which has no lease record")
            elif lease.state.ended:
                out.append(
                    f"{ORPHAN_CLAIM}: GPU {uuid} still holds a claim of {c.lease_id}, which ended as "
                    f"{lease.state.value} ({lease.end_reason or 'no reason'})"
                )
            else:
                claims_of.setdefault(c.lease_id, Counter())[_claim_share(uuid, c)] += 1
    for lease_id, lease in sorted(pool.leases.items()):
        if lease.state.ended:
            continue
        slices = Counter(_slice_share(s) for s in lease.slices)
        claims = claims_of.get(lease_id, Counter())
        for uuid, memory, compute, isolation, mig in sorted((claims - slices).elements()):
            out.append(
                f"{ORPHAN_CLAIM}: GPU {uuid} holds a {isolation.value} claim of {lease_id} ({_gib(memory)}, "
                f"{compute} milli{_at_slot(mig)}) that matches none of the lease's slices {sorted(slices)}"
            )
        for uuid, memory, compute, isolation, mig in sorted((slices - claims).elements()):
            out.append(
                f"{MISSING_CLAIM}: live lease {lease_id} ({lease.state.value}) has a {isolation.value} slice on "
                f"GPU {uuid} ({_gib(memory)}, {compute} milli{_at_slot(mig)}) with no matching claim in "
                f"gpustate/{uuid}"
            )
    return out


def _claim_share(uuid: str, claim: Claim) -> _Share:
    mig = (claim.mig.profile, claim.mig.start, claim.mig.size) if claim.mig is not None else ()
    return (uuid, claim.memory_bytes, claim.compute_milli, claim.isolation, mig)


def _slice_share(s: SliceRecord) -> _Share:
    mig = (s.mig_profile, s.mig_start, s.mig_size) if s.isolation is Isolation.MIG else ()
    return (s.gpu_uuid, s.memory_bytes, s.compute_milli, s.isolation, mig)


def _at_slot(mig: tuple[str, int, int] | tuple[()]) -> str:
    return f", MIG {mig[0]} at slot {mig[1]}" if mig else ""


def _describe(m: MigRecord) -> str:
    holder = f" of {m.lease_id}" if m.lease_id else ""
    made = f" {m.uuid}" if m.uuid else ""
    slots = f"{m.start}-{m.start + m.slot.size - 1}"
    return f"{m.slot.profile} (id {m.slot.profile_id}) at slots {slots} {m.state.value}{holder}{made}"


def mig_violations(pool: PoolContents) -> list[str]:
    """MIG instance records: a layout the hardware allows, each held one a live lease's claim, each MIG slice booked.

    Per GPU: no two records overlap; no profile beyond its max instances; every record vgpu made at an
    allowed start of a profile of the GPU's model; every CREATING/READY record belongs to a live lease that
    holds a MIG claim at exactly that slot. Per live lease: each MIG slice has its record, held by the lease,
    READY with the slice's MIG UUID once it has one (both are written in one transaction), CREATING before.
    Over the pool: no MIG UUID booked twice.
    """
    out: list[str] = []
    owners: dict[str, list[str]] = {}
    for uuid, state in sorted(pool.states.items()):
        if not state.mig:
            continue
        for m in state.mig:
            if m.uuid:
                owners.setdefault(m.uuid, []).append(f"{uuid} slot {m.start}")
        record = pool.gpus.get(uuid)
        if record is None:
            out.append(
                f"{MIG_ORPHAN}: gpustate/{uuid} books {len(state.mig)} MIG instance(s) but gpus/{uuid} does not exist"
            )
            continue
        out += [
            f"{MIG_OVERLAP}: GPU {uuid} books {_describe(a)} and {_describe(b)} over the same memory slices"
            for a, b in overlapping(state.mig)
        ]
        out += _layout_violations(uuid, record, state)
        out += [_orphan(pool, uuid, state, m) for m in state.mig if m.held and not _holds(pool, state, m)]
    for lease_id, lease in sorted(pool.leases.items()):
        if lease.state.ended:
            continue
        for s in lease.slices:
            if s.isolation is Isolation.MIG:
                problem = _slice_problem(lease_id, s, pool.states.get(s.gpu_uuid, GpuState()))
                if problem:
                    out.append(
                        f"{MIG_MISSING}: live lease {lease_id} ({lease.state.value}) has a MIG slice {s.mig_profile} "
                        f"at slot {s.mig_start} of GPU {s.gpu_uuid} (uuid {s.mig_uuid or 'not yet'}) but {problem}"
                    )
    out += [
        f"{MIG_DUPLICATE_UUID}: MIG instance {mig_uuid} is booked {len(where)} times: {', '.join(where)}"
        for mig_uuid, where in sorted(owners.items())
        if len(where) > 1
    ]
    return out


def _layout_violations(uuid: str, record: GpuRecord, state: GpuState) -> list[str]:
    """Max instances per profile id, and the slots of the records vgpu made, against the model's geometry."""
    model = model_of(record)
    if model is None or not model.mig_capable:
        return [f"{MIG_BAD_SLOT}: GPU {uuid} is a {record.model}, which has no MIG, but books MIG instances"]
    out: list[str] = []
    by_id = {p.id: p for p in model.mig_profiles}
    for profile_id, n in sorted(Counter(m.slot.profile_id for m in state.mig).items()):
        profile = by_id.get(profile_id)
        if profile is not None and n > profile.max_instances:
            out.append(
                f"{MIG_OVER_MAX}: GPU {uuid} ({record.model}) books {n} instances of {profile.name} (id {profile_id}); "
                f"at most {profile.max_instances} can exist"
            )
    for m in state.mig:
        if m.state is MigState.FOREIGN:
            continue  # found on the hardware: whatever the driver made, even a profile the table lacks
        profile = by_id.get(m.slot.profile_id)
        if profile is None or MigSlot(profile.name, profile.id, m.start, profile.memory_slices) != m.slot:
            out.append(f"{MIG_BAD_SLOT}: GPU {uuid} ({record.model}) books {_describe(m)}, no profile of the model")
        elif m.start not in profile.allowed_starts:
            out.append(
                f"{MIG_BAD_SLOT}: GPU {uuid} ({record.model}) books {_describe(m)}; {profile.name} starts only at "
                f"{list(profile.allowed_starts)}"
            )
    return out


def _holds(pool: PoolContents, state: GpuState, m: MigRecord) -> bool:
    """Whether a held record's lease is live and holds a MIG claim at exactly its slot."""
    lease = pool.leases.get(m.lease_id)
    if lease is None or lease.state.ended:
        return False
    return any(c.lease_id == m.lease_id and c.mig == m.slot for c in state.claims)


def _orphan(pool: PoolContents, uuid: str, state: GpuState, m: MigRecord) -> str:
    lease = pool.leases.get(m.lease_id)
    if not m.lease_id:
        why = "it names no lease"
    elif lease is None:
        why = f"{m.lease_id} has no lease record"
    elif lease.state.ended:
        why = f"{m.lease_id} ended as {lease.state.value} ({lease.end_reason or 'no reason'})"
    else:
        claims = [
            (c.isolation.value, c.mig.profile if c.mig else "", c.mig.start if c.mig else -1)
            for c in state.claims
            if c.lease_id == m.lease_id
        ]
        why = f"{m.lease_id} holds no MIG claim at that slot (its claims here: {claims})"
    return f"{MIG_ORPHAN}: GPU {uuid} books {_describe(m)} but {why}"


def _slice_problem(lease_id: str, s: SliceRecord, state: GpuState) -> str:
    """What is wrong with the record behind a live lease's MIG slice; empty when it is right."""
    m = state.mig_at(s.mig_start)
    if m is None:
        return f"gpustate/{s.gpu_uuid} books no instance there"
    if (m.slot.profile, m.slot.size) != (s.mig_profile, s.mig_size) or m.lease_id != lease_id or not m.held:
        return f"the record there is {_describe(m)}"
    if s.mig_uuid and (m.state is not MigState.READY or m.uuid != s.mig_uuid):
        return f"the record there is {_describe(m)}"
    if not s.mig_uuid and m.state is not MigState.CREATING:
        return f"the record there is {_describe(m)}, yet the slice was never given its UUID"
    return ""


def end_violations(pool: PoolContents) -> list[str]:
    """Every ended lease says why and when it ended."""
    return [
        f"{BAD_END}: lease {lease_id} ended as {lease.state.value} with end_reason={lease.end_reason!r} "
        f"ended_at={lease.ended_at}"
        for lease_id, lease in sorted(pool.leases.items())
        if lease.state.ended and (not lease.end_reason or lease.ended_at <= 0)
    ]


def client_violations(pool: PoolContents, granted: Mapping[str, ClientView]) -> list[str]:
    """Every lease a client saw granted is in etcd; one the client released shows that release (or an earlier end)."""
    out: list[str] = []
    for lease_id, view in sorted(granted.items()):
        lease = pool.leases.get(lease_id)
        if lease is None:
            out.append(f"{LOST_LEASE}: lease {lease_id} was granted to a client but leases/{lease_id} is not in etcd")
            continue
        if view.released_at is None:
            continue
        answered = f"daemon answered {view.release_state!r}"
        if not lease.state.ended:
            out.append(
                f"{RELEASE_LOST}: the client released lease {lease_id} at {view.released_at:.3f} ({answered}) "
                f"but etcd still shows it {lease.state.value}"
            )
        elif lease.ended_at > view.released_at:
            out.append(
                f"{RELEASE_LOST}: the client released lease {lease_id} at {view.released_at:.3f} ({answered}) "
                f"but etcd shows it {lease.state.value} ({lease.end_reason}) at {lease.ended_at:.3f}, later"
            )
        elif view.release_state == LeaseState.RELEASED.value and lease.state is not LeaseState.RELEASED:
            out.append(
                f"{RELEASE_LOST}: the daemon confirmed the release of lease {lease_id} but etcd shows it "
                f"{lease.state.value} ({lease.end_reason})"
            )
    return out


def idle_violations(pool: PoolContents) -> list[str]:
    """With every client stopped, no lease may stay live (TTL ends abandoned ones) and no request may wait."""
    live = [
        f"{NOT_IDLE}: lease {lease_id} on {lease.node} is still {lease.state.value} although every client "
        f"stopped (alive/{lease_id} {'present' if lease_id in pool.alive else 'absent: nothing left to expire it'})"
        for lease_id, lease in sorted(pool.leases.items())
        if not lease.state.ended
    ]
    waiting = [
        f"{NOT_IDLE}: queue/{lease_id} still waits although every client stopped" for lease_id in sorted(pool.queued)
    ]
    return live + waiting


def static_violations(pool: PoolContents, granted: Mapping[str, ClientView], *, expect_idle: bool = False) -> list[str]:
    """Every invariant that etcd's contents alone decide."""
    return [
        *pool.unreadable,
        *capacity_violations(pool),
        *claim_violations(pool),
        *mig_violations(pool),
        *end_violations(pool),
        *client_violations(pool, granted),
        *(idle_violations(pool) if expect_idle else []),
    ]


def _expected_allocation(pool: PoolContents) -> dict[str, tuple[int, int, int]]:
    """Per registered GPU: (memory, compute, slices) claimed in etcd."""
    out = {}
    for uuid in pool.gpus:
        state = pool.states.get(uuid, GpuState())
        out[uuid] = (state.memory_claimed, state.compute_claimed, len(state.claims))
    return out


async def _daemon_disagreements(
    endpoint: str, stub: admin_pb2_grpc.AdminServiceAsyncStub, expected: dict[str, tuple[int, int, int]], revision: int
) -> list[str]:
    path = socket_of(endpoint)
    try:
        metadata = await LocalCredential(path).metadata_async(RPC_TIMEOUT) if path is not None else ()
        answer = await stub.ListGpus(admin_pb2.ListGpusRequest(), timeout=RPC_TIMEOUT, metadata=metadata)
    except CredentialError as exc:
        return [f"{DAEMON_DISAGREES}: {endpoint} gave no credential: {exc}"]
    except grpc.aio.AioRpcError as exc:
        return [f"{DAEMON_DISAGREES}: {endpoint} did not answer ListGpus: {exc.code().name} {exc.details()}"]
    seen = {g.uuid: (g.allocated.memory_bytes, g.allocated.compute_milli, g.allocated.slices) for g in answer.gpus}
    out = [
        f"{DAEMON_DISAGREES}: {endpoint} does not list GPU {uuid}, which etcd has"
        for uuid in sorted(expected.keys() - seen.keys())
    ]
    out += [
        f"{DAEMON_DISAGREES}: {endpoint} lists GPU {uuid}, which etcd does not have"
        for uuid in sorted(seen.keys() - expected.keys())
    ]
    for uuid in sorted(expected.keys() & seen.keys()):
        if seen[uuid] != expected[uuid]:
            (dm, dc, ds), (em, ec, es) = seen[uuid], expected[uuid]
            out.append(
                f"{DAEMON_DISAGREES}: {endpoint} shows GPU {uuid} with {dm} B / {dc} milli in {ds} slice(s) "
                f"allocated, etcd (revision {revision}) has {em} B / {ec} milli in {es}"
            )
    return out


async def daemon_violations(store: Store, cluster: str, daemons: Sequence[str], *, settle_timeout: float) -> list[str]:
    """Each daemon's ListGpus matches etcd's gpustate; retried until `settle_timeout` so watches catch up.

    etcd is re-read every round (expiries may still land), and the last round's differences are reported.
    """
    channels = [
        grpc.aio.insecure_channel(endpoint, options=[("grpc.default_authority", "localhost")]) for endpoint in daemons
    ]
    try:
        stubs = [admin_pb2_grpc.AdminServiceStub(channel) for channel in channels]
        deadline = time.monotonic() + settle_timeout
        while True:
            pool = await read_contents(store, cluster)
            expected = _expected_allocation(pool)
            rounds = await asyncio.gather(
                *(
                    _daemon_disagreements(ep, stub, expected, pool.revision)
                    for ep, stub in zip(daemons, stubs, strict=True)
                )
            )
            problems = [line for found in rounds for line in found]
            if not problems or time.monotonic() >= deadline:
                return problems
            # A daemon's view is only visible by asking it: poll, within the deadline.
            await asyncio.sleep(_POLL_S)
    finally:
        for channel in channels:
            await channel.close()


async def check_pool(
    store: Store,
    cluster: str,
    *,
    granted: Mapping[str, ClientView],
    daemons: Sequence[str],
    expect_idle: bool = False,
    settle_timeout: float = 15.0,
) -> Report:
    """Check every invariant of `cluster`: etcd's contents, what clients saw, and the running `daemons`' views.

    `granted` maps lease ids to what their clients saw; `daemons` are the endpoints of the daemons still
    running; `expect_idle` also requires that no lease is live (every client has stopped).
    """
    pool = await read_contents(store, cluster)
    violations = static_violations(pool, granted, expect_idle=expect_idle)
    violations += await daemon_violations(store, cluster, daemons, settle_timeout=settle_timeout)
    return Report(
        violations=tuple(violations),
        revision=pool.revision,
        gpus=len(pool.gpus),
        claims=sum(len(s.claims) for s in pool.states.values()),
        lease_states=dict(Counter(lease.state.value for lease in pool.leases.values())),
        daemons_checked=len(daemons),
    )

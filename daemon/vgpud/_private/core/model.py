"""The pool's records as the scheduling core sees them: plain frozen values, JSON in etcd.

Nothing here does I/O. Records round-trip through `to_json`/`from_json` so that what is stored stays
readable with etcdctl.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, replace
from typing import Any, Self

from vgpud._private.core.mig_records import MigRecord, MigSlot, MigState


class GpuMode(enum.StrEnum):
    """How a GPU is split (DESIGN.md: shared, mig, exclusive)."""

    SHARED = "shared"
    MIG = "mig"
    EXCLUSIVE = "exclusive"


class Isolation(enum.StrEnum):
    """Kind of a granted slice."""

    SHARED = "shared"
    MIG = "mig"
    WHOLE = "whole"


class LeaseState(enum.StrEnum):
    """Lease state machine; see lease_state.py for the allowed transitions."""

    PENDING = "pending"
    GRANTED = "granted"
    RESIZING = "resizing"
    PREEMPTING = "preempting"
    SUSPENDED = "suspended"
    RELEASED = "released"
    REVOKED = "revoked"
    EXPIRED = "expired"

    @property
    def ended(self) -> bool:
        """True for the terminal states."""
        return self in _ENDED


_ENDED = frozenset({LeaseState.RELEASED, LeaseState.REVOKED, LeaseState.EXPIRED})


def dumps_record(data: dict[str, Any]) -> bytes:
    """Compact, key-sorted JSON (what every record is stored as)."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def loads_record(raw: bytes) -> dict[str, Any]:
    """A stored record's JSON object; ValueError for anything else."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("record is not a JSON object")  # noqa: TRY004 -- callers catch ValueError for bad records
    return data


@dataclass(frozen=True, slots=True)
class GpuRecord:
    """Static facts about one physical GPU (key gpus/<uuid>)."""

    uuid: str
    node: str
    index: int
    model: str
    name: str
    memory_bytes: int
    sm_count: int
    mig_capable: bool
    mig_enabled: bool
    backend: str
    mps_pipe_dir: str = ""
    """The pipe directory of the MPS control daemon its node runs for it ([mps] enabled); empty: no MPS."""

    def to_json(self) -> bytes:
        """Serialise for etcd."""
        return dumps_record({f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def from_json(cls, raw: bytes) -> Self:
        """Parse what to_json wrote (records from before a field existed take its default)."""
        data = loads_record(raw)
        return cls(**{f: data[f] for f in cls.__dataclass_fields__ if f in data or f != "mps_pipe_dir"})


@dataclass(frozen=True, slots=True)
class Claim:
    """Capacity one lease holds on one GPU."""

    lease_id: str
    memory_bytes: int
    compute_milli: int
    isolation: Isolation = Isolation.SHARED
    mig: MigSlot | None = None
    """The MIG instance a MIG claim takes (isolation MIG only)."""


def _by_start(records: tuple[MigRecord, ...]) -> tuple[MigRecord, ...]:
    """MIG records in memory-slice order (how a GPU state keeps them)."""
    return tuple(sorted(records, key=lambda m: m.slot.start))


@dataclass(frozen=True, slots=True)
class GpuState:
    """The mutable part of a GPU (key gpustate/<uuid>): its mode and every claim on it.

    Acquires, releases and mode changes all compare this key's mod revision, so no two writers can act
    on the same view of a GPU.
    """

    mode: GpuMode = GpuMode.SHARED
    claims: tuple[Claim, ...] = ()
    mig: tuple[MigRecord, ...] = ()
    """MIG instances on the GPU, from placement until destroyed: every one holds its memory slices."""

    @property
    def memory_claimed(self) -> int:
        """Bytes held by all claims."""
        return sum(c.memory_bytes for c in self.claims)

    @property
    def compute_claimed(self) -> int:
        """Milli-GPU held by all claims."""
        return sum(c.compute_milli for c in self.claims)

    def with_claim(self, claim: Claim) -> GpuState:
        """This state plus one claim; a MIG claim binds the warm instance at its slot or books a new one."""
        state = replace(self, claims=(*self.claims, claim))
        if claim.mig is None:
            return state
        warm = self.mig_at(claim.mig.start)
        if warm is not None and warm.state is MigState.WARM and warm.slot == claim.mig:
            bound = replace(warm, state=MigState.READY, lease_id=claim.lease_id, idle_since=0.0)
            return state.with_mig_replaced(warm, bound)
        return replace(state, mig=_by_start((*self.mig, MigRecord(claim.mig, MigState.CREATING, claim.lease_id))))

    def without_lease(self, lease_id: str) -> GpuState:
        """This state with every claim of `lease_id` removed; its MIG instances turn RELEASING (slots stay taken)."""
        return replace(
            self,
            claims=tuple(c for c in self.claims if c.lease_id != lease_id),
            mig=tuple(m.released() if m.held and m.lease_id == lease_id else m for m in self.mig),
        )

    def mig_at(self, start: int) -> MigRecord | None:
        """The MIG record starting at memory slice `start`."""
        return next((m for m in self.mig if m.slot.start == start), None)

    def with_mig_replaced(self, old: MigRecord, new: MigRecord | None) -> GpuState:
        """This state with one MIG record swapped for `new` (or dropped with None)."""
        kept = tuple(m for m in self.mig if m != old)
        return replace(self, mig=kept if new is None else _by_start((*kept, new)))

    def to_json(self) -> bytes:
        """Serialise for etcd."""
        return dumps_record(
            {
                "mode": self.mode.value,
                "claims": [
                    {
                        "lease_id": c.lease_id,
                        "memory_bytes": c.memory_bytes,
                        "compute_milli": c.compute_milli,
                        "isolation": c.isolation.value,
                        **({"mig": c.mig.to_dict()} if c.mig else {}),
                    }
                    for c in self.claims
                ],
                **({"mig": [m.to_dict() for m in self.mig]} if self.mig else {}),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> GpuState:
        """Parse what to_json wrote."""
        data = loads_record(raw)
        claims = tuple(
            Claim(
                lease_id=c["lease_id"],
                memory_bytes=int(c["memory_bytes"]),
                compute_milli=int(c["compute_milli"]),
                isolation=Isolation(c.get("isolation", "shared")),
                mig=MigSlot.from_dict(c["mig"]) if "mig" in c else None,
            )
            for c in data.get("claims", [])
        )
        mig = tuple(MigRecord.from_dict(m) for m in data.get("mig", []))
        return cls(mode=GpuMode(data.get("mode", "shared")), claims=claims, mig=mig)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A live daemon (key nodes/<name>, bound to the node's etcd lease)."""

    name: str
    endpoint: str
    version: str
    started_at: float
    backend: str
    gpu_count: int
    labels: dict[str, str] = field(default_factory=dict)
    gpus: tuple[str, ...] = ()
    """UUIDs the backend found at this start: the only GPUs of the node that take new work."""
    host: str = ""
    """Host name of the daemon's machine, so another host cannot take over a live node name."""
    unhealthy: tuple[str, ...] = ()
    """UUIDs its backend reports unhealthy now, so the leader and other daemons place nothing there."""
    address: str = ""
    """Where other hosts reach this one (`[node] address`): a job's MASTER_ADDR when its first node is here."""
    tcp_endpoint: str = ""
    """HOST:PORT of the daemon's mutual-TLS listener, which other daemons dial to start a job's ranks here."""

    def healthy(self, uuid: str) -> bool:
        """Whether this node's daemon last reported the GPU healthy."""
        return uuid not in self.unhealthy

    def to_json(self) -> bytes:
        """Serialise for etcd."""
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}
        data["gpus"] = list(self.gpus)
        data["unhealthy"] = list(self.unhealthy)
        return dumps_record(data)

    @classmethod
    def from_json(cls, raw: bytes) -> Self:
        """Parse what to_json wrote."""
        data = loads_record(raw)
        data["gpus"] = tuple(data.get("gpus", ()))
        data["unhealthy"] = tuple(data.get("unhealthy", ()))
        return cls(**{f: data[f] for f in cls.__dataclass_fields__ if f in data})


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Admin-set, persistent node settings (key nodecfg/<name>)."""

    draining: bool = False

    def to_json(self) -> bytes:
        """Serialise for etcd."""
        return dumps_record({"draining": self.draining})

    @classmethod
    def from_json(cls, raw: bytes) -> NodeConfig:
        """Parse what to_json wrote."""
        return cls(draining=bool(loads_record(raw).get("draining", False)))


@dataclass(frozen=True, slots=True)
class Owner:
    """Who asked for a lease, as vgpud verified it (only `description` comes from the client)."""

    user: str = ""
    """The verified user name (lease calls of users must come from this name)."""
    host: str = ""
    """The node that served the acquire (local callers) or the peer address (certificates)."""
    pid: int = 0
    description: str = ""
    identity: str = ""
    """How the owner was proven: "local:uid=N" or the certificate's SPIFFE id."""
    uid: int | None = None
    """The owner's uid on `host` (local callers only): the node watchdog signals only processes of this uid."""


@dataclass(frozen=True, slots=True)
class ShapeRequest:
    """A validated request for slices, in core units."""

    isolation: Isolation
    memory_bytes: int
    compute_milli: int
    count: int = 1
    gpu_models: tuple[str, ...] = ()
    mig_profile: str = ""
    """MIG profile asked for by name; empty with isolation MIG: the smallest holding memory/compute."""
    flexible: bool = False
    """No isolation asked: a MIG instance may serve a SHARED-shaped request (the pool picks)."""
    compute_milli_max: int = 0
    """Elastic: granted at compute_milli or more, grown toward this when capacity is idle (0: not elastic)."""
    count_max: int = 0
    """Elastic count: granted at count or more slices, up to this (0: not elastic)."""

    @property
    def elastic(self) -> bool:
        """Whether the grant may be above the minimum (and shrunk back to it before a preemption)."""
        return self.compute_milli_max > self.compute_milli or self.count_max > self.count

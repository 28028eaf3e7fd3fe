"""Leases as etcd keeps them (key leases/<id>): the granted slices and the lease's life. Plain frozen values.

Only the SHA-256 of a lease's token is stored; the JSON stays readable with etcdctl.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from vgpud._private.core.model import Isolation, LeaseState, Owner, ShapeRequest, dumps_record, loads_record


@dataclass(frozen=True, slots=True)
class SliceRecord:
    """One granted slice of one GPU."""

    node: str
    gpu_uuid: str
    gpu_index: int
    gpu_model: str
    isolation: Isolation
    memory_bytes: int
    compute_milli: int
    mig_profile: str = ""
    mig_start: int = 0
    mig_size: int = 0
    mig_uuid: str = ""
    """Empty until the node daemon has created the instance: the lease is delivered once all are set."""

    @property
    def waiting_for_mig(self) -> bool:
        """A MIG slice whose instance does not exist yet."""
        return self.isolation is Isolation.MIG and not self.mig_uuid


def _mig_slice_fields(s: SliceRecord) -> dict[str, Any]:
    return {"mig_profile": s.mig_profile, "mig_start": s.mig_start, "mig_size": s.mig_size, "mig_uuid": s.mig_uuid}


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A lease (key leases/<id>). Only the SHA-256 of its token is stored."""

    id: str
    token_sha256: str
    state: LeaseState
    node: str
    project: str
    priority: str
    owner: Owner
    request: ShapeRequest
    slices: tuple[SliceRecord, ...]
    created_at: float
    ttl_seconds: int
    liveness_lease: int
    """The store lease behind the alive/<id> key; the SDK's heartbeats refresh it."""
    request_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ended_at: float = 0.0
    end_reason: str = ""
    end_message: str = ""
    target_node: str = ""
    """The node the request named (or the asked daemon's); empty when it asked for any node."""
    any_node: bool = False
    """The request let the leader place it on any node."""
    gang: bool = False
    """The request asked for all slices or none."""
    steps: tuple[tuple[str, float], ...] = ()
    """What happened to the lease and when (granted, preempt, checkpointed, suspended, resumed, resized)."""
    preempt_deadline: float = 0.0
    """While PREEMPTING: the wall time by which the client must acknowledge, else it is revoked."""
    preempt_reason: str = ""
    preemptions: int = 0
    """How often the lease was suspended."""
    idle_since: float = 0.0
    """Set when its reported use stayed under the idle threshold for the idle time (reclaimed first)."""
    event: str = ""
    """The kind of the last change for lease watchers: "resumed", "resized" or "warning" on a GRANTED lease."""
    warning: str = ""
    """Set by the node watchdog while the lease's processes are over its memory budget: what it saw."""
    warning_deadline: float = 0.0
    """While `warning` is set: when the lease is revoked unless its use is back under the budget."""

    def step(self, *names: str, at: float) -> tuple[tuple[str, float], ...]:
        """The steps with these appended (the oldest dropped past 32, so a lease preempted often stays small)."""
        return (*self.steps, *((name, at) for name in names))[-32:]

    def last_step(self, *names: str, default: float = 0.0) -> float:
        """When the latest of these steps happened (`default` when none did)."""
        return next((at for name, at in reversed(self.steps) if name in names), default)

    @property
    def waiting_for_mig(self) -> bool:
        """Granted, but a MIG instance of it is not created yet (not deliverable)."""
        return any(s.waiting_for_mig for s in self.slices)

    @property
    def delivered(self) -> LeaseRecord:
        """The lease as its client may see it: no slice whose MIG instance is not created yet.

        The leader writes a resume's (or a growth's) slices before the node daemon creates their instances;
        a client told of them then would restore or start onto a device that does not exist yet. So a resume
        still reads SUSPENDED and a growth shows only the slices it had. A first grant is held back by
        Acquire itself until its instances exist, and is shown as it is.
        """
        if self.state is not LeaseState.GRANTED or self.event not in ("resumed", "resized") or not self.waiting_for_mig:
            return self
        if self.event == "resumed":
            return replace(self, state=LeaseState.SUSPENDED, slices=(), event="")
        return replace(self, slices=tuple(s for s in self.slices if not s.waiting_for_mig), event="")

    def ended_as(self, state: LeaseState, reason: str, message: str, at: float) -> LeaseRecord:
        """A copy in terminal `state` with its end reason."""
        return replace(self, state=state, end_reason=reason, end_message=message, ended_at=at)

    def to_json(self) -> bytes:
        """Serialise for etcd."""
        return dumps_record(
            {
                "id": self.id,
                "token_sha256": self.token_sha256,
                "state": self.state.value,
                "node": self.node,
                "project": self.project,
                "priority": self.priority,
                "owner": {
                    "user": self.owner.user,
                    "host": self.owner.host,
                    "pid": self.owner.pid,
                    "description": self.owner.description,
                    "identity": self.owner.identity,
                    "uid": self.owner.uid,
                },
                "request": {
                    "isolation": self.request.isolation.value,
                    "memory_bytes": self.request.memory_bytes,
                    "compute_milli": self.request.compute_milli,
                    "count": self.request.count,
                    "gpu_models": list(self.request.gpu_models),
                    "mig_profile": self.request.mig_profile,
                    "flexible": self.request.flexible,
                    "compute_milli_max": self.request.compute_milli_max,
                    "count_max": self.request.count_max,
                    "node": self.target_node,
                    "any_node": self.any_node,
                    "gang": self.gang,
                },
                "slices": [
                    {
                        "node": s.node,
                        "gpu_uuid": s.gpu_uuid,
                        "gpu_index": s.gpu_index,
                        "gpu_model": s.gpu_model,
                        "isolation": s.isolation.value,
                        "memory_bytes": s.memory_bytes,
                        "compute_milli": s.compute_milli,
                        **(_mig_slice_fields(s) if s.isolation is Isolation.MIG else {}),
                    }
                    for s in self.slices
                ],
                "created_at": self.created_at,
                "ttl_seconds": self.ttl_seconds,
                "liveness_lease": self.liveness_lease,
                "request_id": self.request_id,
                "labels": self.labels,
                "ended_at": self.ended_at,
                "end_reason": self.end_reason,
                "end_message": self.end_message,
                "steps": [list(s) for s in self.steps],
                "preempt_deadline": self.preempt_deadline,
                "preempt_reason": self.preempt_reason,
                "preemptions": self.preemptions,
                "idle_since": self.idle_since,
                "event": self.event,
                "warning": self.warning,
                "warning_deadline": self.warning_deadline,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> LeaseRecord:
        """Parse what to_json wrote."""
        d = loads_record(raw)
        req = d["request"]
        return cls(
            id=d["id"],
            token_sha256=d["token_sha256"],
            state=LeaseState(d["state"]),
            node=d["node"],
            project=d.get("project", ""),
            priority=d.get("priority", ""),
            owner=Owner(**d.get("owner", {})),
            request=ShapeRequest(
                isolation=Isolation(req["isolation"]),
                memory_bytes=int(req["memory_bytes"]),
                compute_milli=int(req["compute_milli"]),
                count=int(req.get("count", 1)),
                gpu_models=tuple(req.get("gpu_models", ())),
                mig_profile=req.get("mig_profile", ""),
                flexible=bool(req.get("flexible", False)),
                compute_milli_max=int(req.get("compute_milli_max", 0)),
                count_max=int(req.get("count_max", 0)),
            ),
            slices=tuple(
                SliceRecord(
                    node=s["node"],
                    gpu_uuid=s["gpu_uuid"],
                    gpu_index=int(s["gpu_index"]),
                    gpu_model=s["gpu_model"],
                    isolation=Isolation(s["isolation"]),
                    memory_bytes=int(s["memory_bytes"]),
                    compute_milli=int(s["compute_milli"]),
                    mig_profile=s.get("mig_profile", ""),
                    mig_start=int(s.get("mig_start", 0)),
                    mig_size=int(s.get("mig_size", 0)),
                    mig_uuid=s.get("mig_uuid", ""),
                )
                for s in d.get("slices", [])
            ),
            created_at=float(d["created_at"]),
            ttl_seconds=int(d["ttl_seconds"]),
            liveness_lease=int(d["liveness_lease"]),
            request_id=d.get("request_id", ""),
            labels=dict(d.get("labels", {})),
            ended_at=float(d.get("ended_at", 0.0)),
            end_reason=d.get("end_reason", ""),
            end_message=d.get("end_message", ""),
            target_node=req.get("node", ""),
            any_node=bool(req.get("any_node", False)),
            gang=bool(req.get("gang", False)),
            steps=tuple((str(n), float(t)) for n, t in d.get("steps", [])),
            preempt_deadline=float(d.get("preempt_deadline", 0.0)),
            preempt_reason=d.get("preempt_reason", ""),
            preemptions=int(d.get("preemptions", 0)),
            idle_since=float(d.get("idle_since", 0.0)),
            event=d.get("event", ""),
            warning=d.get("warning", ""),
            warning_deadline=float(d.get("warning_deadline", 0.0)),
        )

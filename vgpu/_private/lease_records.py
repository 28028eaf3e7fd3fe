"""Plain, frozen Python views of the API messages the SDK hands to users (no protobuf in the public API).

Enum values become lower-case words ("granted", "shared", "preempt") so user code compares strings,
not generated constants.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from vgpu._private.errors import InvalidRequestError
from vgpu.api.v1 import types_pb2, workload_pb2

ENDED_STATES = frozenset({"released", "revoked", "expired"})
"""Lease states after which nothing comes back."""


def _word(full_name: str, prefix: str) -> str:
    """'LEASE_STATE_GRANTED' -> 'granted'; 'unspecified' for the zero value."""
    return full_name.removeprefix(prefix).lower()


def lease_state_name(value: int) -> str:
    """A LeaseState enum value as a word such as 'granted'."""
    try:
        return _word(types_pb2.LeaseState.Name(value), "LEASE_STATE_")  # type: ignore[arg-type]  # ints come off the wire
    except ValueError:
        return f"unknown({value})"


def isolation_name(value: int) -> str:
    """An Isolation enum value as 'shared', 'mig' or 'whole'."""
    try:
        return _word(types_pb2.Isolation.Name(value), "ISOLATION_")  # type: ignore[arg-type]  # ints come off the wire
    except ValueError:
        return f"unknown({value})"


def event_type_name(value: int) -> str:
    """A LeaseEventType enum value as a word such as 'preempt' or 'keepalive'."""
    try:
        return _word(workload_pb2.LeaseEventType.Name(value), "LEASE_EVENT_TYPE_")  # type: ignore[arg-type]  # ints come off the wire
    except ValueError:
        return f"unknown({value})"


def timestamp_or_none(ts: timestamp_pb2.Timestamp, *, present: bool = True) -> dt.datetime | None:
    """A UTC datetime, or None for an unset (zero) timestamp."""
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=dt.UTC)


def steps_of(msg: types_pb2.Lease) -> tuple[tuple[str, dt.datetime], ...]:
    """The lease's life so far as (step, UTC time) pairs: granted, preempt, suspended, resumed, resized, ..."""
    return tuple((step.step, step.time.ToDatetime(tzinfo=dt.UTC)) for step in msg.steps)


@dataclass(frozen=True, slots=True)
class PreemptNotice:
    """The daemon asks a lease to checkpoint and give its slices back before `deadline` (UTC).

    A lease that has not acknowledged by then (`lease.checkpoint()` or `lease.ack_preempt()`) is revoked
    and its processes are killed; `reason` says who needs the capacity, in words.
    """

    deadline: dt.datetime
    reason: str


def _notice(deadline: timestamp_pb2.Timestamp, present: bool, reason: str) -> PreemptNotice:
    # A daemon always sends a deadline with a preemption; without one the safe reading is "now".
    when = timestamp_or_none(deadline, present=present) or dt.datetime.now(dt.UTC)
    return PreemptNotice(deadline=when, reason=reason)


def notice_of_lease(msg: types_pb2.Lease) -> PreemptNotice | None:
    """The preemption a lease message shows (state PREEMPTING), or None."""
    if msg.state != types_pb2.LEASE_STATE_PREEMPTING:
        return None
    return _notice(msg.preempt_deadline, msg.HasField("preempt_deadline"), msg.preempt_reason)


def notice_of_event(msg: workload_pb2.WatchLeaseResponse) -> PreemptNotice | None:
    """The preemption an event carries: its PreemptNotice detail, else its lease's PREEMPTING state."""
    if msg.HasField("preempt"):
        if msg.preempt.HasField("deadline"):
            return _notice(msg.preempt.deadline, True, msg.preempt.reason or msg.lease.preempt_reason)
        return _notice(
            msg.lease.preempt_deadline,
            msg.lease.HasField("preempt_deadline"),
            msg.preempt.reason or msg.lease.preempt_reason,
        )
    return notice_of_lease(msg.lease)


def notice_of_heartbeat(answer: workload_pb2.HeartbeatResponse, reason: str) -> PreemptNotice | None:
    """The preemption a heartbeat answer shows (state PREEMPTING or a deadline), or None."""
    has_deadline = answer.HasField("preempt_deadline")
    if answer.state != types_pb2.LEASE_STATE_PREEMPTING and not has_deadline:
        return None
    return _notice(answer.preempt_deadline, has_deadline, reason)


@dataclass(frozen=True, slots=True)
class Slice:
    """One granted piece of one GPU."""

    node: str
    gpu_uuid: str
    gpu_index: int
    gpu_model: str
    isolation: str
    memory_bytes: int
    compute_milli: int
    mig_profile: str = ""
    mig_uuid: str = ""

    @classmethod
    def from_proto(cls, msg: types_pb2.Slice) -> Slice:
        """Build from the API message."""
        return cls(
            node=msg.node,
            gpu_uuid=msg.gpu_uuid,
            gpu_index=msg.gpu_index,
            gpu_model=msg.gpu_model,
            isolation=isolation_name(msg.isolation),
            memory_bytes=msg.memory_bytes,
            compute_milli=msg.compute_milli,
            mig_profile=msg.mig_profile,
            mig_uuid=msg.mig_uuid,
        )


def nodes_of(slices: Iterable[Slice]) -> tuple[str, ...]:
    """The sorted names of the nodes the slices are on."""
    return tuple(sorted({piece.node for piece in slices if piece.node}))


def environments_by_node(msg: types_pb2.Lease) -> dict[str, dict[str, str]]:
    """The lease message's per-node environments (`node_environments`) keyed by node name."""
    return {entry.node: dict(entry.env) for entry in msg.node_environments}


def pick_environment(
    lease_id: str,
    default: Mapping[str, str],
    by_node: Mapping[str, Mapping[str, str]],
    nodes: Iterable[str],
    node: str | None,
) -> dict[str, str]:
    """A copy of `default` for node=None, else of the node's environment; a node without one is refused."""
    if node is None:
        return dict(default)
    env = by_node.get(node) if isinstance(node, str) else None
    if env is not None:
        return dict(env)
    spanned = list(nodes)
    if node in spanned:
        raise InvalidRequestError(
            f"lease {lease_id} has slices on node {node!r} but the daemon sent no environment for it "
            "(a vgpud without per-node environments?): use lease.env there"
        )
    spans = ", ".join(spanned) or "none yet"
    raise InvalidRequestError(
        f"lease {lease_id} has no environment for node {node!r}: it has slices on these nodes: {spans}"
    )


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a lease, as the daemon verified it (empty in other users' leases)."""

    user: str
    host: str
    pid: int
    description: str
    identity: str = ""
    """How the owner was proven: "local:uid=N" (the kernel) or a certificate's spiffe:// id."""
    uid: int | None = None
    """The owner's uid on `host` (local callers only)."""

    @classmethod
    def from_proto(cls, msg: types_pb2.Owner) -> Owner:
        """Build from the API message."""
        return cls(
            user=msg.user,
            host=msg.host,
            pid=msg.pid,
            description=msg.description,
            identity=msg.identity,
            uid=msg.uid if msg.HasField("uid") else None,
        )


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """Where a waiting acquire stands, as the daemon last reported it."""

    position: int
    queue_length: int
    estimated_wait_s: float | None
    reason: str

    @classmethod
    def from_proto(cls, msg: types_pb2.QueueStatus) -> QueueInfo:
        """Build from the API message."""
        wait = msg.estimated_wait.ToTimedelta().total_seconds() if msg.HasField("estimated_wait") else None
        return cls(position=msg.position, queue_length=msg.queue_length, estimated_wait_s=wait, reason=msg.reason)


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A read-only snapshot of a lease (from `Pool.leases()` / `Pool.get_lease()`); holds no token."""

    id: str
    state: str
    project: str
    priority: str
    owner: Owner
    slices: tuple[Slice, ...]
    node: str
    ttl: int
    created_at: dt.datetime | None
    ended_at: dt.datetime | None
    end_reason: str
    end_message: str
    preempt_deadline: dt.datetime | None
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    env: dict[str, str] = field(default_factory=dict, hash=False)
    node_environments: dict[str, dict[str, str]] = field(default_factory=dict, hash=False)
    """The environment for each node the lease spans, by node name (no token: snapshots hold none)."""
    preempt_reason: str = ""
    """Why the lease is being (or was last) preempted, in words."""
    steps: tuple[tuple[str, dt.datetime], ...] = ()
    """What happened to the lease and when: (step, UTC time) pairs such as ('preempt', ...)."""
    preemptions: int = 0
    """How often the lease was preempted and resumed."""
    idle_since: dt.datetime | None = None
    """Set once the lease's reported use stayed idle long enough: such leases are reclaimed first."""

    @property
    def ended(self) -> bool:
        """True once released, revoked or expired."""
        return self.state in ENDED_STATES

    @property
    def nodes(self) -> tuple[str, ...]:
        """The sorted names of the nodes the lease's slices are on."""
        return nodes_of(self.slices)

    def environment(self, node: str | None = None) -> dict[str, str]:
        """The environment for processes on `node` (default: `env`, the answering daemon's choice).

        Raises InvalidRequestError for a node the lease has no environment for.
        """
        return pick_environment(self.id, self.env, self.node_environments, self.nodes, node)

    @classmethod
    def from_proto(cls, msg: types_pb2.Lease) -> LeaseInfo:
        """Build from the API message."""
        return cls(
            id=msg.id,
            state=lease_state_name(msg.state),
            project=msg.project,
            priority=msg.priority,
            owner=Owner.from_proto(msg.owner),
            slices=tuple(Slice.from_proto(s) for s in msg.slices),
            node=msg.node,
            ttl=msg.ttl.seconds,
            created_at=timestamp_or_none(msg.created_at, present=msg.HasField("created_at")),
            ended_at=timestamp_or_none(msg.ended_at, present=msg.HasField("ended_at")),
            end_reason=msg.end_reason,
            end_message=msg.end_message,
            preempt_deadline=timestamp_or_none(msg.preempt_deadline, present=msg.HasField("preempt_deadline")),
            labels=dict(msg.labels),
            env=dict(msg.env),
            node_environments=environments_by_node(msg),
            preempt_reason=msg.preempt_reason,
            steps=steps_of(msg),
            preemptions=msg.preemptions,
            idle_since=timestamp_or_none(msg.idle_since, present=msg.HasField("idle_since")),
        )


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """One event of a lease's WatchLease stream; `sequence` is what to resume after.

    On a 'warning' event `reason` is the watchdog's words (empty once use is back under the budget).

    `preempt` is set on a 'preempt' event (and on any event whose lease is preempting); `slices` are the
    lease's slices after the event, the new ones for a 'resized' or 'resumed' event.
    """

    sequence: int
    type: str
    state: str
    time: dt.datetime | None
    preempt_deadline: dt.datetime | None = None
    reason: str = ""
    slices: tuple[Slice, ...] = ()
    preempt: PreemptNotice | None = None

    @classmethod
    def from_proto(cls, msg: workload_pb2.WatchLeaseResponse) -> LeaseEvent:
        """Build from the API message; `reason` is the preemption reason or the lease's end reason."""
        notice = notice_of_event(msg)
        deadline: dt.datetime | None = None
        reason = msg.lease.end_reason
        slices = tuple(Slice.from_proto(s) for s in msg.lease.slices)
        if msg.HasField("preempt"):
            deadline = timestamp_or_none(msg.preempt.deadline, present=msg.preempt.HasField("deadline"))
            reason = msg.preempt.reason or reason
        elif msg.lease.HasField("preempt_deadline"):
            deadline = timestamp_or_none(msg.lease.preempt_deadline)
        if msg.HasField("resize"):
            slices = tuple(Slice.from_proto(s) for s in msg.resize.slices)
        if msg.type == workload_pb2.LEASE_EVENT_TYPE_WARNING:
            reason = msg.lease.warning
        return cls(
            sequence=msg.sequence,
            type=event_type_name(msg.type),
            state=lease_state_name(msg.lease.state),
            time=timestamp_or_none(msg.time, present=msg.HasField("time")),
            preempt_deadline=deadline,
            reason=reason,
            slices=slices,
            preempt=notice,
        )

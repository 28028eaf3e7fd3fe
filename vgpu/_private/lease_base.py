"""What a held lease shows, shared by `Lease` (threads) and `AsyncLease` (asyncio).

Fields are updated from daemon answers (acquire, heartbeat, refresh, events) under a lock, because the
heartbeat thread writes while user code reads.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from vgpu._private.lease_records import (
    ENDED_STATES,
    Slice,
    environments_by_node,
    lease_state_name,
    nodes_of,
    pick_environment,
    timestamp_or_none,
)
from vgpu.api.v1 import types_pb2, workload_pb2

log = logging.getLogger("vgpu")

LostCallback = Callable[[str], object]


class LeaseBase:
    """Fields and lost-tracking of a lease this process holds (has the token of)."""

    def __init__(self, msg: types_pb2.Lease, token: str) -> None:
        self._lock = threading.Lock()
        self._id = msg.id
        self._token = token
        env = dict(msg.env)
        if token:
            env["VGPU_LEASE"] = token
        self._env = env
        self._project = msg.project
        self._priority = msg.priority
        self._node = msg.node
        self._labels = dict(msg.labels)
        self._created_at = timestamp_or_none(msg.created_at, present=msg.HasField("created_at"))
        self._state = "unspecified"
        self._slices: tuple[Slice, ...] = ()
        self._node_envs: dict[str, dict[str, str]] = {}
        self._ttl = 0
        self._end_reason = ""
        self._end_message = ""
        self._preempt_deadline: dt.datetime | None = None
        self._lost_reason: str | None = None
        self._end_heard = False
        """The daemon said the lease ended (a heartbeat's LEASE_ENDED) before its end event was read."""
        self._released = False
        self.on_lost: LostCallback | None = None
        """Called once with the reason when the SDK marks the lease lost (from the heartbeat thread/task)."""
        self._apply(msg)

    # -- read-only fields -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """The lease id, e.g. 'lease-0123456789ab'."""
        return self._id

    @property
    def token(self) -> str:
        """The secret that proves ownership ('<lease_id>.<secret>'); what VGPU_LEASE carries."""
        return self._token

    @property
    def env(self) -> dict[str, str]:
        """A copy of the environment for the lease's processes (CUDA_VISIBLE_DEVICES, VGPU_LEASE, ...).

        It is for the node of the daemon that answered the acquire (when the lease has slices there);
        `environment(node)` gives the environment for each node in `nodes`.
        """
        return dict(self._env)

    def environment(self, node: str | None = None) -> dict[str, str]:
        """A copy of the environment for the lease's processes on `node` (one entry of `nodes`).

        node=None gives `env` (the node of the daemon that answered the acquire). Each node's copy
        carries VGPU_LEASE too, so `vgpu.attach()` works there; a node the lease has no slices on
        raises InvalidRequestError naming the nodes it does span.
        """
        with self._lock:
            env = pick_environment(self._id, self._env, self._node_envs, nodes_of(self._slices), node)
        if self._token:
            env["VGPU_LEASE"] = self._token
        return env

    @property
    def slices(self) -> tuple[Slice, ...]:
        """The granted slices; each carries its node."""
        return self._slices

    @property
    def nodes(self) -> tuple[str, ...]:
        """The sorted names of the nodes the lease's slices are on (more than one for a gang across nodes)."""
        return nodes_of(self._slices)

    @property
    def state(self) -> str:
        """The last known state: 'granted', 'preempting', 'released', ..."""
        return self._state

    @property
    def project(self) -> str:
        """The project the lease is charged to."""
        return self._project

    @property
    def priority(self) -> str:
        """The priority class."""
        return self._priority

    @property
    def node(self) -> str:
        """The node whose daemon granted the lease."""
        return self._node

    @property
    def labels(self) -> dict[str, str]:
        """A copy of the lease's labels."""
        return dict(self._labels)

    @property
    def created_at(self) -> dt.datetime | None:
        """When the daemon granted the lease (UTC)."""
        return self._created_at

    @property
    def ttl(self) -> int:
        """Liveness TTL in seconds: the lease expires this long after the daemon last heard from us."""
        return self._ttl

    @property
    def preempt_deadline(self) -> dt.datetime | None:
        """Set while the lease is preempting: checkpoint before this time."""
        return self._preempt_deadline

    @property
    def end_reason(self) -> str:
        """Why the lease ended (a reason constant), once it has."""
        return self._end_reason

    @property
    def lost(self) -> bool:
        """True once the SDK stopped being able to keep the lease (ended under us, daemon gone past TTL)."""
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        """Why the lease was marked lost, in words."""
        return self._lost_reason

    @property
    def released(self) -> bool:
        """True once this process released the lease."""
        return self._released

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._id} state={self._state} slices={len(self._slices)}>"

    # -- updates from daemon answers ----------------------------------------------------------------
    def _apply(self, msg: types_pb2.Lease) -> None:
        """Take the fields a daemon answer carries (env keeps the acquire's copy with the token)."""
        with self._lock:
            self._state = lease_state_name(msg.state)
            self._slices = tuple(Slice.from_proto(s) for s in msg.slices)
            if msg.node_environments:  # ended leases come without environments: keep the last ones
                self._node_envs = environments_by_node(msg)
            self._ttl = msg.ttl.seconds or self._ttl
            self._end_reason = msg.end_reason
            self._end_message = msg.end_message
            self._preempt_deadline = timestamp_or_none(msg.preempt_deadline, present=msg.HasField("preempt_deadline"))

    def _apply_heartbeat(self, answer: workload_pb2.HeartbeatResponse) -> None:
        with self._lock:
            self._state = lease_state_name(answer.state)
            if answer.ttl.seconds:
                self._ttl = answer.ttl.seconds
            self._preempt_deadline = timestamp_or_none(
                answer.preempt_deadline, present=answer.HasField("preempt_deadline")
            )

    def _apply_event(self, event: workload_pb2.WatchLeaseResponse) -> None:
        if event.HasField("lease") and event.lease.id:
            self._apply(event.lease)

    @property
    def _ended(self) -> bool:
        return self._state in ENDED_STATES

    def _ended_reason(self) -> str:
        """Words for an ended lease, from the last answer."""
        text = f"lease {self._id} was {self._state}"
        detail = self._end_message or self._end_reason
        return f"{text}: {detail}" if detail else text

    def _mark_lost(self, reason: str) -> bool:
        """Record the loss; True for the first caller only (who then calls on_lost)."""
        with self._lock:
            if self._lost_reason is not None or self._released:
                return False
            self._lost_reason = reason
        log.warning("vgpu lease %s lost: %s", self._id, reason)
        return True

    def _mark_released(self) -> bool:
        """Record the release; True the first time."""
        with self._lock:
            if self._released:
                return False
            self._released = True
            return True

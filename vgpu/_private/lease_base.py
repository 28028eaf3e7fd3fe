"""What a held lease shows, shared by `Lease` (threads) and `AsyncLease` (asyncio).

Fields are updated from daemon answers (acquire, heartbeat, refresh, events) under a lock, because the
heartbeat thread writes while user code reads. The same updates feed the preemption tracker, so a notice
is seen whichever stream (heartbeat, follower, the user's own events()) brings it first.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from vgpu._private import errors, process_identity
from vgpu._private.errors import InvalidRequestError, LeaseStateError
from vgpu._private.lease_records import (
    ENDED_STATES,
    PreemptNotice,
    Slice,
    environments_by_node,
    lease_state_name,
    nodes_of,
    notice_of_event,
    notice_of_heartbeat,
    notice_of_lease,
    pick_environment,
    steps_of,
    timestamp_or_none,
)
from vgpu._private.lease_runtime import LeaseRuntime
from vgpu._private.loss_notice import LossNotice, LostCallback
from vgpu._private.preemption import PreemptionTracker
from vgpu._private.process_environment import AppliedEnvironment, apply_environment
from vgpu._private.units import MILLI_PER_GPU, UnitError, parse_memory
from vgpu.api.v1 import types_pb2, workload_pb2

log = logging.getLogger("vgpu")


def _nothing() -> None:
    return None


class LeaseBase(LeaseRuntime, LossNotice):
    """Fields and lost-tracking of a lease this process holds (has the token of)."""

    def __init__(
        self, msg: types_pb2.Lease, token: str, *, on_lost: LostCallback | None = None, raise_on_lost: bool = True
    ) -> None:
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
        self._preempt_reason = ""
        self._steps: tuple[tuple[str, dt.datetime], ...] = ()
        self._preemptions = 0
        self._warning = ""
        self._preempt = PreemptionTracker()
        self._usage: workload_pb2.Usage | None = None
        self._init_runtime()
        self._identity_socket = process_identity.identity().hold(token) if token else None
        """Where the node watchdog can learn this process's pid (reported on every heartbeat)."""
        self._notify: Callable[[], None] = _nothing
        """Wakes whoever waits on the lease (a checkpoint() call); called with the lock held."""
        self._released = False
        self._releasing = False
        """release() has begun (it stops following before the RPC): waiters learn it was released."""
        self._exported: AppliedEnvironment | None = None
        """The environment `acquire(..., apply=True)` set for the lease's life; restored when it is let go."""
        self._init_loss(on_lost, raise_on_lost)
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
        `environment(node)` gives the environment for each node in `nodes`. It follows the lease: after a
        resume (maybe on other GPUs) or a resize it names the new slices.

        Raises LeaseStateError while the lease is suspended (preempted and acknowledged): its GPUs then
        belong to another lease, and a process started with the last environment would run on them. Wait
        for `checkpoint()` to return (or `on_resume`) and read it again.
        """
        with self._lock:
            self._check_not_suspended()
            return dict(self._env)

    def environment(self, node: str | None = None) -> dict[str, str]:
        """A copy of the environment for the lease's processes on `node` (one entry of `nodes`).

        node=None gives `env` (the node of the daemon that answered the acquire). Each node's copy
        carries VGPU_LEASE too, so `vgpu.attach()` works there; a node the lease has no slices on
        raises InvalidRequestError naming the nodes it does span.
        """
        with self._lock:
            self._check_not_suspended()
            env = pick_environment(self._id, self._env, self._node_envs, nodes_of(self._slices), node)
        if self._token:
            env["VGPU_LEASE"] = self._token
        return env

    def apply(self) -> AppliedEnvironment:
        """Export `env` into this process (os.environ), so frameworks running here see only the lease's GPUs.

        For in-process training (PyTorch, CuPy, JAX) without a child process. CUDA reads CUDA_VISIBLE_DEVICES
        once, when it initialises: call this before anything in the process touches the GPU, or pass
        `apply=True` to `acquire()` when torch or cupy is imported already. Raises InvalidRequestError (reason
        CUDA_ALREADY_INITIALIZED) when CUDA runs here already with other devices; the same values are fine.

        Returns the variables set, as an `AppliedEnvironment`: `with lease.apply():` (or `.restore()`) puts
        the previous values back. The change is process-wide: child processes inherit it (and VGPU_LEASE, so
        `vgpu.attach()` works in them). After a resume on other GPUs (`on_resume`), the process still sees the
        old ones: CUDA cannot switch devices under a running process.
        """
        self._check_usable()
        return apply_environment(self.env, lease_id=self._id)

    def _export_env_for_life(self) -> None:
        """`apply()` until the lease is let go (acquire's apply=True); raises as apply() does."""
        self._exported = self.apply()

    def _restore_exported_env(self) -> None:
        exported, self._exported = self._exported, None
        if exported is not None:
            exported.restore()

    @property
    def slices(self) -> tuple[Slice, ...]:
        """The granted slices; each carries its node."""
        return self._slices

    @property
    def nodes(self) -> tuple[str, ...]:
        """The sorted names of the nodes the lease's slices are on (more than one for a gang across nodes)."""
        return nodes_of(self._slices)

    @property
    def status(self) -> str:
        """The lease's last known lifecycle state: 'granted', 'preempting', 'suspended', 'released', ...

        Once the lease is lost because the daemon ended it, the state it ended in ('revoked', 'expired').
        """
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
    def preempt_notice(self) -> PreemptNotice | None:
        """The preemption that waits to be acted on (deadline and reason), or None."""
        notice = self._preempt.notice
        return notice if self._preempt.requested else None

    @property
    def preempt_requested(self) -> bool:
        """True from a preemption notice until it is acknowledged: time to call `checkpoint()`.

        Cheap enough for every iteration: a flag set by the background follower (started on first use) and
        by heartbeat answers.
        """
        self._start_follower()
        return self._preempt.requested

    @property
    def suspended(self) -> bool:
        """True while the lease is preempted and acknowledged: it holds no slices until it is resumed."""
        return self._preempt.suspended

    @property
    def steps(self) -> tuple[tuple[str, dt.datetime], ...]:
        """What happened to the lease and when, as the daemon records it: (step, UTC time) pairs."""
        return self._steps

    @property
    def preemptions(self) -> int:
        """How often the lease was preempted and resumed."""
        return self._preemptions

    @property
    def warning(self) -> str:
        """The node watchdog's warning while the lease's processes are over its memory budget ("" if none).

        It says what was seen and by when use must be back under the budget; past that the lease is revoked
        (end reason MEMORY_BUDGET_EXCEEDED) and its processes are stopped.
        """
        return self._warning

    @property
    def end_reason(self) -> str:
        """Why the lease ended (a reason constant), once it has."""
        return self._end_reason

    @property
    def released(self) -> bool:
        """True once this process released the lease."""
        return self._released

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._id} state={self._state} slices={len(self._slices)}>"

    # -- usage reports ------------------------------------------------------------------------------
    def report_usage(self, *, utilization: float, memory: int | str | None = None) -> None:
        """Tell the daemon what the workload uses now; the report rides on every following heartbeat.

        `utilization`: the busy share of the granted GPU time, 0.0..1.0 (required: the daemon flags a lease
        whose utilization stays under its idle threshold, and reclaims idle leases first). `memory`: GPU
        memory in use, in bytes or a size such as "3GiB", shown next to what was granted; left out, the last
        reported value stays. Report again as use changes: the last report is what the daemon sees.
        """
        if isinstance(utilization, bool) or not isinstance(utilization, int | float) or not 0 <= utilization <= 1:
            raise InvalidRequestError(f"utilization must be a share between 0.0 and 1.0, got {utilization!r}")
        if memory is not None:
            if isinstance(memory, bool) or not isinstance(memory, int | str):
                raise InvalidRequestError(f"memory must be a number of bytes or a size such as '3GiB', got {memory!r}")
            if isinstance(memory, str):
                try:
                    memory = parse_memory(memory)
                except UnitError as exc:
                    raise InvalidRequestError(str(exc)) from None
            if memory < 0:
                raise InvalidRequestError(f"memory must be >= 0 bytes, got {memory}")
        with self._lock:
            if memory is None:
                memory = self._usage.memory_bytes if self._usage is not None else 0
            self._usage = workload_pb2.Usage(
                reported=True, memory_bytes=memory, utilization_milli=round(utilization * MILLI_PER_GPU)
            )

    def _usage_report(self) -> workload_pb2.Usage | None:
        with self._lock:
            usage = self._usage
        runtime = self._runtime
        if usage is None and runtime is not None:  # what the workload reported itself wins
            busy, memory = runtime.usage()
            usage = workload_pb2.Usage(
                reported=True, memory_bytes=memory, utilization_milli=round(busy * MILLI_PER_GPU)
            )
        if self._identity_socket is None:
            return usage
        report = workload_pb2.Usage(identity_socket=self._identity_socket)
        if usage is not None:
            report.MergeFrom(usage)
        return report

    def _drop_identity(self) -> None:
        """This process no longer answers for the lease (released, or let go on purpose)."""
        if self._identity_socket is not None:
            process_identity.identity().drop(self._token)
            self._identity_socket = None

    # -- updates from daemon answers ----------------------------------------------------------------
    def _apply(self, msg: types_pb2.Lease) -> None:
        """Take the fields a daemon answer carries (the token is the one this process holds)."""
        with self._lock:
            self._apply_locked(msg)

    def _apply_locked(self, msg: types_pb2.Lease, notice: PreemptNotice | None = None) -> None:
        """As _apply, with the lock held; `notice` is the preemption the message came with (an event's)."""
        notice = notice or notice_of_lease(msg)
        state = lease_state_name(msg.state)
        self._state = state
        self._slices = tuple(Slice.from_proto(s) for s in msg.slices)
        if state not in ENDED_STATES:  # ended leases come without environments: keep the last ones
            env = dict(msg.env)
            if self._token:
                env["VGPU_LEASE"] = self._token
            self._env = env
            self._node_envs = environments_by_node(msg)  # a resumed lease may span other nodes
            self._node = msg.node or self._node
        self._ttl = msg.ttl.seconds or self._ttl
        self._end_reason = msg.end_reason
        self._end_message = msg.end_message
        self._preempt_deadline = timestamp_or_none(msg.preempt_deadline, present=msg.HasField("preempt_deadline"))
        self._preempt_reason = msg.preempt_reason or self._preempt_reason
        if notice is not None:
            self._preempt_deadline = notice.deadline
            self._preempt_reason = notice.reason or self._preempt_reason
        self._steps = steps_of(msg) or self._steps
        self._preemptions = msg.preemptions or self._preemptions
        if msg.warning and msg.warning != self._warning:
            log.warning("vgpu lease %s: %s", self._id, msg.warning)
        self._warning = msg.warning if state not in ENDED_STATES else self._warning
        self._preempt.observe_notice(notice)
        self._preempt.observe_state(state)
        self._notify()

    def _apply_heartbeat(self, answer: workload_pb2.HeartbeatResponse) -> None:
        with self._lock:
            self._state = lease_state_name(answer.state)
            if answer.ttl.seconds:
                self._ttl = answer.ttl.seconds
            self._preempt_deadline = timestamp_or_none(
                answer.preempt_deadline, present=answer.HasField("preempt_deadline")
            )
            if self._preempt.observe_notice(notice_of_heartbeat(answer, self._preempt_reason)):
                self._notify()
        self._runtime_gpu_idle(answer.gpu_otherwise_idle)

    def _apply_event(self, event: workload_pb2.WatchLeaseResponse) -> None:
        if not (event.HasField("lease") and event.lease.id):
            return
        with self._lock:
            self._apply_locked(event.lease, notice_of_event(event))
            if event.HasField("resize") and not event.lease.slices:
                self._slices = tuple(Slice.from_proto(s) for s in event.resize.slices)

    def _check_not_suspended(self) -> None:
        """Refuse to hand out the environment of slices the lease gave back (caller holds the lock)."""
        if self._preempt.suspended and self._state not in ENDED_STATES:
            raise LeaseStateError(
                f"lease {self._id} is suspended (preempted): its GPUs belong to another lease until it is "
                "resumed; read env again after checkpoint() returns or in on_resume",
                reason=errors.LEASE_SUSPENDED,
            )

    def _check_usable(self) -> None:
        """Raise unless this process still holds the lease (overridden)."""

    def _start_follower(self) -> None:
        """Start following the lease's events, if this flavour has not yet (overridden)."""

    @property
    def _ended(self) -> bool:
        return self._state in ENDED_STATES

    def _ended_reason(self) -> str:
        """Words for an ended lease, from the last answer."""
        text = f"lease {self._id} was {self._state}"
        detail = self._end_message or self._end_reason
        return f"{text}: {detail}" if detail else text

    def _mark_released(self) -> bool:
        """Record the release; True the first time."""
        with self._lock:
            if self._released:
                return False
            self._released = True
            return True

"""What the gRPC servicers share: the pool view, the allocator, the queue and this node's settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from vgpud._private.auth.access import Access
from vgpud._private.auth.audit import AuditTrail
from vgpud._private.auth.gate import Gate
from vgpud._private.config_scheduling import SchedulingConfig
from vgpud._private.core.burst import gpu_otherwise_idle
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.priorities import STANDARD, PriorityClasses
from vgpud._private.grants.allocator import Allocator
from vgpud._private.grants.lease_transitions import LeaseTransitions
from vgpud._private.idle_leases import IdleLeases
from vgpud._private.log_limit import LogLimit
from vgpud._private.node_watchdog import NodeWatchdog
from vgpud._private.pool_view import PoolView
from vgpud._private.queueing.pool_queue import PoolQueue
from vgpud._private.registry import Keys
from vgpud._private.store.base import Store
from vgpud._private.usage_ledger import UsageLedger


@dataclass(slots=True)
class Serving:
    """Handles the servicers need; built once by daemon.py."""

    store: Store
    keys: Keys
    view: PoolView
    allocator: Allocator
    queue: PoolQueue
    node: str
    """This daemon's node name."""
    endpoint: str
    """What clients on this node dial (put into lease environments)."""
    known_models: Collection[str]
    known_profiles: Collection[str]
    """Every MIG profile name of the geometry table (what a mig= request may name)."""
    default_ttl: int
    ttl_bounds: tuple[int, int]
    rpc_timeout: float
    """Deadline for store calls when the client sent none."""
    max_queue_wait: float
    """Longest a waiting acquire is held when the client sent no deadline."""
    stopping: asyncio.Event
    gate: Gate
    """Who is calling, and the authorization table."""
    classes: PriorityClasses = STANDARD
    """Priority classes from the config."""
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    transitions: LeaseTransitions = field(init=False)
    """Preempt, acknowledge, resize (built from the allocator)."""
    idle: IdleLeases = field(init=False)
    """Idle flags from heartbeat usage reports."""
    on_preempted: Callable[[float, str], None] = lambda _seconds, _outcome: None
    """Preemption latency (decision to slices freed) and outcome, for metrics."""
    on_error: Callable[[str, str], None] = lambda _method, _code: None
    on_acquire: Callable[[float, str], None] = lambda _seconds, _outcome: None
    healthy: Callable[[str], bool] = lambda _uuid: True
    watchdog: NodeWatchdog | None = None
    """Takes the heartbeats' usage reports and identity sockets; None when [watchdog] is off."""
    ledger: UsageLedger | None = None
    """This node's allocation vs. use ledger; None when [accounting] is off."""
    usage_retention_days: int = 35
    """How far back `vgpuctl report` may ask ([accounting] retention_days)."""
    audit: AuditTrail | None = None
    """Admin mutations and refusals; None where nothing is recorded (unit tests)."""
    audit_retention_days: int = 90
    """How far back `vgpuctl audit` may ask ([audit] retention_days)."""
    access: Access = field(default_factory=Access)
    """Project membership, priority classes limited to projects, the default project's openness."""
    log_limit: LogLimit = field(default_factory=lambda: LogLimit(1.0))
    """Refusals of client input are logged through this, at a bounded rate."""

    def mps_pipes(self, lease: LeaseRecord) -> dict[str, str]:
        """GPU UUID -> MPS pipe directory of the lease's GPUs whose nodes run MPS for them (lease environments)."""
        pipes: dict[str, str] = {}
        for piece in lease.slices:
            gpu = self.view.gpu(piece.gpu_uuid)
            if gpu is not None and gpu.mps_pipe_dir:
                pipes[piece.gpu_uuid] = gpu.mps_pipe_dir
        return pipes

    def gpu_otherwise_idle(self, lease: LeaseRecord) -> bool:
        """Whether no other lease uses this lease's GPUs now (heartbeat answers: "burst" may use all of it)."""
        view = self.view
        uses = self.watchdog.uses if self.watchdog is not None else {}

        def holders(uuid: str) -> list[str]:
            return [claim.lease_id for claim in view.gpu_state(uuid).value.claims]

        def lease_of(lease_id: str) -> LeaseRecord | None:
            found = view.lease(lease_id)
            return found.value if found is not None and not found.value.state.ended else None

        def utilization(lease_id: str) -> float | None:
            use = uses.get(lease_id)
            return use.utilization if use is not None else None

        return gpu_otherwise_idle(lease, holders, lease_of, utilization, self.scheduling.idle_utilization)

    def __post_init__(self) -> None:
        self.transitions = LeaseTransitions(self.allocator)
        self.idle = IdleLeases(
            self.allocator, threshold=self.scheduling.idle_utilization, after_s=self.scheduling.idle_after_s
        )

"""Capacity writes: grant, end, mode and drain changes, each one etcd transaction.

Every transaction compares the mod revision of each GPU state it rewrites, so two daemons (or two tasks of
one daemon) acting on the same view cannot both win: the loser re-reads and places again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import structlog

from vgpu._private import reasons
from vgpud._private.core.cluster_placement import place_on_nodes
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.lease_state import check_transition
from vgpud._private.core.model import GpuMode, GpuState, LeaseState, NodeConfig, Owner, ShapeRequest
from vgpud._private.core.placement import GpuView, Placement, Unplaceable
from vgpud._private.core.placement_policy import PlacementPolicy
from vgpud._private.core.queue_order import place_local, place_request
from vgpud._private.grants.gpu_modes import mode_change, switchable_now
from vgpud._private.grants.granted_slices import slices_of
from vgpud._private.grants.liveness_leases import LivenessLeases
from vgpud._private.grants.project_gate import within_limit
from vgpud._private.grants.write_batch import Fence, Overlay, WriteBatcher
from vgpud._private.lease_tokens import check_token, hash_secret, lease_identity, lease_token
from vgpud._private.pool_view import PoolView, Queued, Versioned
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys
from vgpud._private.store.base import Delete, Put, Store, StoreError, StoreUnavailableError

log = structlog.get_logger("vgpud.allocator")
T = TypeVar("T")

_ALIVE_TRACKED = 10_000
_NO_ROOM = frozenset({reasons.NO_CAPACITY, reasons.NEVER_FITS})
_BUILD_REFUSALS = _NO_ROOM | {reasons.NODE_DRAINING, reasons.OVER_QUOTA}
"""Refusals only a grant's build raises: the transaction did not run for it, so its liveness lease is unused."""


@dataclass(frozen=True, slots=True)
class AcquireSpec:
    """A validated acquire: the shape plus who asks and for how long."""

    shape: ShapeRequest
    node: str
    """The node the slices must be on; empty with any_node."""
    ttl_seconds: int
    project: str = ""
    priority: str = ""
    owner: Owner = field(default_factory=Owner)
    labels: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    any_node: bool = False
    """Place on any node (the leader decides)."""
    span: bool = False
    """A gang that may spread over several nodes."""
    gang: bool = False
    """All slices or none (as asked; span is what it allows across nodes)."""


class Allocator:
    """Grants and ends leases against etcd through one group-committing writer per daemon."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        view: PoolView,
        *,
        timeout: float,
        history_ttl: int,
        default_ttl: int,
        healthy: Callable[[str], bool] = lambda _uuid: True,
        clock: Callable[[], float] = time.time,
        fence: Fence | None = None,
        local_node: str = "",
        node_alive_until: Callable[[], float] = lambda: float("inf"),
        auto_mode: bool = False,
        placement: Callable[[], PlacementPolicy | None] = lambda: None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._view = view
        self._timeout = timeout
        self._history_ttl = history_ttl
        self._clock = clock
        self._healthy = healthy
        """Whether a GPU of this node may take new work (the backend's health check, fresher than etcd's)."""
        self._history: tuple[int, float] | None = None
        self._history_lock = asyncio.Lock()
        self._writes = WriteBatcher(store, keys, view, timeout, fence)
        self._local_node = local_node
        self._node_alive_until = node_alive_until
        """Monotonic time until which this node's own etcd lease surely holds (partition handling)."""
        self._alive_until: dict[str, float] = {}
        """Per lease: monotonic time until which its liveness lease surely holds, from our last refresh."""
        self.liveness = LivenessLeases(store, ttl=default_ttl, timeout=timeout)
        self._auto_mode = auto_mode
        """Idle MIG-capable GPUs count as switchable, so requests for the other mode wait instead of failing."""
        self.placement_policy = placement
        """The policy that ranks where a grant goes now (None: best fit); see placement_source.py."""

    @property
    def clock(self) -> Callable[[], float]:
        """Wall clock of lease timestamps (injectable in tests)."""
        return self._clock

    def live_nodes(self) -> list[str]:
        """Names of the nodes whose daemons are up."""
        return sorted(self._view.nodes())

    # -- grant -------------------------------------------------------------------------------------
    def candidates(self, node: str, overlay: Overlay | None = None) -> list[GpuView]:
        """The GPUs of `node` as placement sees them now (with a batch's staged changes)."""
        live = self._view.node(node)
        open_node = live is not None and not self._view.node_config(node).value.draining
        present = set(live.gpus) if live is not None and live.gpus else None

        def usable(uuid: str) -> bool:
            return open_node and live is not None and live.healthy(uuid) and self._healthy(uuid)

        views = []
        for record in self._view.gpus_of(node):
            if present is not None and record.uuid not in present:
                continue
            state = overlay.gpu_state(record.uuid) if overlay else self._view.gpu_state(record.uuid).value
            switchable = self._auto_mode and record.mig_capable and switchable_now(state)
            views.append(GpuView(record, state, usable(record.uuid), switchable))
        return views

    def candidates_by_node(self, target: str, overlay: Overlay | None = None) -> dict[str, list[GpuView]]:
        """Every live node's GPUs (or only `target`'s), as cross-node placement takes them."""
        names = [target] if target else sorted(self._view.nodes())
        return {name: self.candidates(name, overlay) for name in names if self._view.node(name) is not None}

    def try_place_in_pool(self, request: ShapeRequest, target: str = "") -> Placement | Unplaceable:
        """Whether `request` could be placed now on `target` (or any node), without writing anything."""
        return place_on_nodes(request, self.candidates_by_node(target), "", policy=self.placement_policy())

    async def acquire(self, spec: AcquireSpec) -> tuple[LeaseRecord, str]:
        """Grant now or raise Refusal (NO_CAPACITY, NEVER_FITS, NODE_DRAINING, CONFLICT...).

        With a request id the lease id is derived from it, so the lease key itself makes a retried
        acquire idempotent: whichever daemon the retry reaches finds the lease instead of granting twice.
        """
        if self._view.node(spec.node) is None:
            raise Refusal(reasons.NODE_NOT_FOUND, f"node {spec.node!r} is not up in this pool")
        lease_id = lease_identity(spec.request_id)
        if spec.request_id:
            existing = await self._existing_grant(lease_id, spec.request_id, read_store=False)
            if existing is not None:
                return existing
        token = lease_token(lease_id, spec.request_id)
        if self._view.node_config(spec.node).value.draining:
            raise Refusal(reasons.NODE_DRAINING, f"node {spec.node} is draining and takes no new work")
        policy = self.placement_policy()
        liveness = await self.liveness.take(spec.ttl_seconds)

        def build(overlay: Overlay) -> LeaseRecord:
            granted = overlay.lease(lease_id)
            if granted is not None:  # a retry of this request won the race elsewhere
                return granted
            if overlay.node_config(spec.node, guard=True).draining:
                raise Refusal(reasons.NODE_DRAINING, f"node {spec.node} is draining and takes no new work")
            gpus = self.candidates(spec.node, overlay)
            result = within_limit(overlay, spec.project, spec.shape, lambda r: place_local(r, gpus, lease_id, policy))
            if isinstance(result, Unplaceable):
                raise Refusal(reasons.NEVER_FITS if result.never else reasons.NO_CAPACITY, result.message)
            for view, claim in result.assignments:
                overlay.put_gpu_state(view.record.uuid, overlay.gpu_state(view.record.uuid).with_claim(claim))
            record = self._record(spec, lease_id, token, liveness, result, overlay=overlay)
            overlay.put_lease(record, new=True)
            overlay.stage(Put(self._keys.alive(lease_id), b"", lease=liveness))
            return record

        try:
            record = await self._writes.submit(build)
        except Refusal as refusal:
            if refusal.reason not in _BUILD_REFUSALS:
                raise
            self.liveness.give_back(liveness, spec.ttl_seconds)  # nothing was written with it
            # A retry whose first attempt was granted (answer lost) may find no room left: look it up.
            retried = spec.request_id and refusal.reason in _NO_ROOM
            existing = await self._existing_grant(lease_id, spec.request_id) if retried else None
            if existing is not None:
                return existing
            raise
        if record.state.ended:
            raise _reused(record)
        log.debug("lease granted", lease=lease_id, slices=len(record.slices))
        return record, token

    # -- the pool-wide queue (leader side) ------------------------------------------------------------
    async def grant_queued(self, entry: Queued) -> LeaseRecord:
        """Grant a waiting request: lease, claims and liveness written, queue key deleted, in one txn.

        Raises Refusal(NO_CAPACITY or NEVER_FITS) when it no longer fits; it then stays queued.
        """
        waiting = entry.request
        lease_id = waiting.lease_id
        liveness = await self.liveness.take(waiting.lease.ttl_seconds)
        policy = self.placement_policy()

        def build(overlay: Overlay) -> LeaseRecord:
            granted = overlay.lease(lease_id)
            if granted is not None:
                return granted
            overlay.guard(self._keys.queue(lease_id), entry.revision)
            for name in [waiting.target_node] if waiting.target_node else sorted(self._view.nodes()):
                overlay.node_config(name, guard=True)
            nodes = self.candidates_by_node(waiting.target_node, overlay)
            on_nodes = lambda r: place_request(r, nodes, lease_id, span=waiting.span, policy=policy)  # noqa: E731
            result = within_limit(overlay, waiting.lease.project, waiting.lease.request, on_nodes)
            if isinstance(result, Unplaceable):
                raise Refusal(reasons.NEVER_FITS if result.never else reasons.NO_CAPACITY, result.message)
            for view, claim in result.assignments:
                overlay.put_gpu_state(view.record.uuid, overlay.gpu_state(view.record.uuid).with_claim(claim))
            now = self._clock()
            record = replace(
                waiting.lease,
                state=LeaseState.GRANTED,
                slices=slices_of(result, overlay),
                created_at=now,
                liveness_lease=liveness,
                steps=(("queued", waiting.lease.created_at), ("granted", now)),
            )
            overlay.put_lease(record, new=True)
            overlay.stage(Put(self._keys.alive(lease_id), b"", lease=liveness))
            overlay.stage(Delete(self._keys.queue(lease_id)))
            return record

        try:
            return await self._writes.submit(build)
        except Refusal as refusal:
            if refusal.reason in _BUILD_REFUSALS:
                self.liveness.give_back(liveness, waiting.lease.ttl_seconds)  # still waiting: the next try takes it
            raise

    async def refuse_queued(self, entry: Queued, reason: str, message: str) -> None:
        """Write the leader's refusal into a waiting request for its asking daemon to deliver."""

        def build(overlay: Overlay) -> None:
            overlay.guard(self._keys.queue(entry.request.lease_id), entry.revision)
            refused = entry.request.refuse(reason, message)
            overlay.stage(Put(self._keys.queue(refused.lease_id), refused.to_json(), lease=entry.store_lease))

        await self._writes.submit(build)

    def pending_record(self, spec: AcquireSpec, lease_id: str, token: str, granting_node: str) -> LeaseRecord:
        """The lease-to-be of a request that goes to the pool-wide queue (no slices yet)."""
        record = self._record(spec, lease_id, token, 0, Placement(()))
        return replace(record, state=LeaseState.PENDING, node=granting_node)

    def _record(
        self,
        spec: AcquireSpec,
        lease_id: str,
        token: str,
        liveness: int,
        placement: Placement,
        *,
        overlay: Overlay | None = None,
    ) -> LeaseRecord:
        slices = slices_of(placement, overlay)
        return LeaseRecord(
            id=lease_id,
            token_sha256=hash_secret(token),
            state=LeaseState.GRANTED,
            node=spec.node,
            project=spec.project,
            priority=spec.priority,
            owner=spec.owner,
            request=spec.shape,
            slices=slices,
            created_at=self._clock(),
            ttl_seconds=spec.ttl_seconds,
            liveness_lease=liveness,
            request_id=hash_secret(spec.request_id) if spec.request_id else "",
            labels=dict(spec.labels),
            target_node="" if spec.any_node else spec.node,
            any_node=spec.any_node,
            gang=spec.gang,
        )

    async def existing(self, request_id: str) -> tuple[LeaseRecord, str] | None:
        """The live lease an earlier attempt of this request id got, with its token (None without an id)."""
        if not request_id:
            return None
        return await self._existing_grant(lease_identity(request_id), request_id)

    async def _existing_grant(
        self, lease_id: str, request_id: str, *, read_store: bool = True
    ) -> tuple[LeaseRecord, str] | None:
        """The lease an earlier attempt of this request got, if any (from etcd too with read_store)."""
        lease = self._view.lease(lease_id)
        if lease is None and read_store:
            kv = await self._store.get(self._keys.lease(lease_id), timeout=self._timeout)
            lease = Versioned(LeaseRecord.from_json(kv.value), kv.mod_revision) if kv is not None else None
        if lease is None:
            return None
        if lease.value.state.ended:
            raise _reused(lease.value)
        return lease.value, lease_token(lease_id, request_id)

    # -- reads -------------------------------------------------------------------------------------
    async def lookup(self, lease_id: str) -> Versioned[LeaseRecord] | None:
        """A lease from the view, else straight from etcd (e.g. granted by another daemon just now)."""
        cached = self._view.lease(lease_id)
        if cached is not None:
            return cached
        kv = await self._store.get(self._keys.lease(lease_id), timeout=self._timeout)
        if kv is None:
            return None
        return Versioned(LeaseRecord.from_json(kv.value), kv.mod_revision)

    async def owned(self, lease_id: str, token: str) -> Versioned[LeaseRecord]:
        """The lease, after checking the caller's token."""
        lease = await self.lookup(lease_id)
        if lease is None:
            raise Refusal(reasons.LEASE_NOT_FOUND, f"no lease {lease_id!r} (ended leases are kept about an hour)")
        check_token(lease.value, token)
        return lease

    async def refresh(self, lease: LeaseRecord) -> int:
        """Heartbeat: extend the lease's liveness; the TTL left, or Refusal when it already ended."""
        if lease.state.ended:
            raise Refusal(reasons.LEASE_ENDED, _ended_message(lease))
        asked = time.monotonic()
        try:
            left = await self._store.refresh(lease.liveness_lease, timeout=self._timeout)
        except StoreError:
            return self._ride_out(lease)
        self._alive_until[lease.id] = asked + left
        self.liveness.refreshed(lease.liveness_lease, lease.ttl_seconds, asked)
        if len(self._alive_until) > _ALIVE_TRACKED:
            self._alive_until = {k: v for k, v in self._alive_until.items() if v > asked}
        if left <= 0:
            ended = await self.end(lease.id, LeaseState.EXPIRED, reasons.END_EXPIRED, "heartbeat came too late")
            raise Refusal(reasons.LEASE_ENDED, _ended_message(ended))
        return left

    def _ride_out(self, lease: LeaseRecord) -> int:
        """With etcd unreachable, keep a lease of this node alive locally until its etcd lease would lapse.

        Past the node's etcd lease the pool has given this node up (the leader revokes its leases as
        NODE_LOST), so the client is told; a lease this daemon never refreshed gets the store error.
        """
        now = time.monotonic()
        on_this_node = any(s.node == self._local_node for s in lease.slices)
        if on_this_node and now >= self._node_alive_until():
            raise Refusal(
                reasons.LEASE_ENDED,
                f"lease {lease.id} is lost: node {self._local_node} lost etcd for longer than its etcd lease "
                "(NODE_LOST); acquire again once the node is back",
            )
        until = min(self._alive_until.get(lease.id, 0.0), self._node_alive_until() if on_this_node else now + 3600)
        if until <= now:
            raise StoreUnavailableError(f"etcd is unreachable; lease {lease.id} cannot be refreshed now")
        return max(1, int(until - now))

    # -- end ---------------------------------------------------------------------------------------
    async def end(
        self, lease_id: str, state: LeaseState, reason: str, message: str, *, refuse_ended: bool = False
    ) -> LeaseRecord:
        """Move a lease to a terminal state and free its claims.

        Ending an ended lease returns it (a release is idempotent); with `refuse_ended` (an eviction) it is
        refused as LEASE_ENDED naming how it ended, also when it ends by other means while this write waits.
        """
        current = await self.lookup(lease_id)
        if current is None:
            raise Refusal(reasons.LEASE_NOT_FOUND, f"no lease {lease_id!r}")
        if current.value.state.ended:
            if refuse_ended:
                raise Refusal(reasons.LEASE_ENDED, _already_ended(current.value))
            return current.value
        history = await self._history_lease()
        ended_here = False

        def build(overlay: Overlay) -> LeaseRecord:
            nonlocal ended_here
            ended_here = False
            lease = overlay.lease(lease_id)
            if lease is None:
                raise Refusal(reasons.LEASE_NOT_FOUND, f"no lease {lease_id!r}")
            if lease.state.ended:
                if refuse_ended:
                    raise Refusal(reasons.LEASE_ENDED, _already_ended(lease))
                return lease
            check_transition(lease.state, state)
            ended = lease.ended_as(state, reason, message, self._clock())
            for uuid in sorted({s.gpu_uuid for s in lease.slices}):
                overlay.put_gpu_state(uuid, overlay.gpu_state(uuid).without_lease(lease_id))
            overlay.put_lease(ended, store_lease=history)
            overlay.stage(Delete(self._keys.alive(lease_id)))
            ended_here = True
            return ended

        ended = await self._writes.submit(build, fallback=current)
        self._alive_until.pop(lease_id, None)
        if ended_here and state is LeaseState.RELEASED and ended.liveness_lease:
            # The liveness lease has no keys left: a young one binds the next grant, an old one expires by
            # itself (a revoke would cost one more round trip per release).
            self.liveness.give_back(ended.liveness_lease, ended.ttl_seconds)
        log.debug("lease ended", lease=lease_id, state=ended.state.value, reason=ended.end_reason)
        return ended

    async def _history_lease(self) -> int:
        """A shared etcd lease that ended lease records hang on, so history ages out by itself."""
        async with self._history_lock:
            now = time.monotonic()
            if self._history is None or now - self._history[1] > self._history_ttl / 4:
                lease = await self._store.grant(self._history_ttl, timeout=self._timeout)
                self._history = (lease, now)
            return self._history[0]

    async def drop_claims(self, uuid: str, lease_id: str) -> None:
        """Remove a lease's claims from one GPU (reconciliation of claims no live lease holds)."""

        def build(overlay: Overlay) -> None:
            lease = overlay.lease(lease_id)
            if lease is not None and not lease.state.ended:
                return  # it is live after all
            overlay.put_gpu_state(uuid, overlay.gpu_state(uuid).without_lease(lease_id))

        await self._writes.submit(build)

    async def commit(self, build: Callable[[Overlay], T]) -> T:
        """One guarded write through this daemon's group-committing writer (the MIG realiser's books)."""
        return await self._writes.submit(build)

    # -- admin -------------------------------------------------------------------------------------
    async def set_mode(self, uuid: str, mode: GpuMode) -> GpuState:
        """Change a GPU's mode; refused while a claim or a MIG instance other than a warm one is on it.

        Only the books change here: the GPU's node daemon then switches the hardware (MIG on or off) and
        the GPU takes work in its new mode once it has (`mode_pending` until then).
        """
        return await self._writes.submit(mode_change(self._view.gpu(uuid), uuid, mode))

    async def set_draining(self, node: str, draining: bool) -> NodeConfig:
        """Mark a node draining (no new work) or back in service."""
        known = self._view.node(node) is not None or bool(self._view.gpus_of(node))
        if not known:
            raise Refusal(reasons.NODE_NOT_FOUND, f"no node {node!r} in this pool (see vgpuctl nodes)")

        def build(overlay: Overlay) -> NodeConfig:
            new_config = replace(overlay.node_config(node), draining=draining)
            overlay.put_node_config(node, new_config)
            return new_config

        return await self._writes.submit(build)


def _reused(lease: LeaseRecord) -> Refusal:
    return Refusal(
        reasons.INVALID_REQUEST,
        f"request_id was already used by lease {lease.id}, which has ended; send a new request_id",
    )


def _ended_message(lease: LeaseRecord) -> str:
    detail = f": {lease.end_message}" if lease.end_message else ""
    return f"lease {lease.id} is {lease.state.value} ({lease.end_reason}{detail})"


def _already_ended(lease: LeaseRecord) -> str:
    detail = f": {lease.end_message}" if lease.end_message else ""
    return f"lease {lease.id} had already ended: {lease.state.value} ({lease.end_reason}{detail}); nothing was changed"

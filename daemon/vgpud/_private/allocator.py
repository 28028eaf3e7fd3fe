"""Capacity writes: grant, end, mode and drain changes, each one etcd transaction.

Every transaction compares the mod revision of each GPU state it rewrites, so two daemons (or two tasks of
one daemon) acting on the same view cannot both win: the loser re-reads and places again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import structlog

from vgpu._private import reasons
from vgpud._private.core.lease_state import check_transition
from vgpud._private.core.model import (
    GpuMode,
    GpuState,
    LeaseRecord,
    LeaseState,
    NodeConfig,
    Owner,
    ShapeRequest,
    SliceRecord,
)
from vgpud._private.core.placement import GpuView, Placement, Unplaceable, place
from vgpud._private.liveness_leases import LivenessLeases
from vgpud._private.pool_view import PoolView, Versioned
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys
from vgpud._private.store.base import Delete, Put, Store
from vgpud._private.write_batch import Overlay, WriteBatcher

log = structlog.get_logger("vgpud.allocator")


@dataclass(frozen=True, slots=True)
class AcquireSpec:
    """A validated acquire: the shape plus who asks and for how long."""

    shape: ShapeRequest
    node: str
    ttl_seconds: int
    project: str = ""
    priority: str = ""
    owner: Owner = field(default_factory=Owner)
    labels: dict[str, str] = field(default_factory=dict)
    request_id: str = ""


def hash_secret(text: str) -> str:
    """Hex SHA-256; tokens and request ids are stored only this way."""
    return hashlib.sha256(text.encode()).hexdigest()


def lease_token(lease_id: str, request_id: str) -> str:
    """`<lease_id>.<secret>`; with a request id the secret is derived from it.

    So a retried acquire can hand back the same token without the daemon ever storing it.
    """
    if request_id:
        secret = hmac.new(request_id.encode(), lease_id.encode(), hashlib.sha256).hexdigest()[:40]
    else:
        secret = secrets.token_hex(20)
    return f"{lease_id}.{secret}"


def check_token(lease: LeaseRecord, token: str) -> None:
    """Refuse unless `token` is this lease's token."""
    if not hmac.compare_digest(hash_secret(token), lease.token_sha256):
        raise Refusal(reasons.LEASE_TOKEN_MISMATCH, f"the token does not belong to lease {lease.id}")


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
    ) -> None:
        self._store = store
        self._keys = keys
        self._view = view
        self._timeout = timeout
        self._history_ttl = history_ttl
        self._clock = clock
        self._healthy = healthy
        """Whether a GPU of this node may take new work (the backend's health check)."""
        self._history: tuple[int, float] | None = None
        self._history_lock = asyncio.Lock()
        self._writes = WriteBatcher(store, keys, view, timeout)
        self.liveness = LivenessLeases(store, ttl=default_ttl, timeout=timeout)

    # -- grant -------------------------------------------------------------------------------------
    def candidates(self, node: str, overlay: Overlay | None = None) -> list[GpuView]:
        """The GPUs of `node` as placement sees them now (with a batch's staged changes)."""
        live = self._view.node(node)
        open_node = live is not None and not self._view.node_config(node).value.draining
        present = set(live.gpus) if live is not None and live.gpus else None
        return [
            GpuView(
                record,
                overlay.gpu_state(record.uuid) if overlay else self._view.gpu_state(record.uuid).value,
                open_node and self._healthy(record.uuid),
            )
            for record in self._view.gpus_of(node)
            if present is None or record.uuid in present
        ]

    def try_place(self, spec: AcquireSpec) -> Placement | Unplaceable:
        """Placement against the current view, without writing anything."""
        return place(spec.shape, self.candidates(spec.node), "")

    async def acquire(self, spec: AcquireSpec) -> tuple[LeaseRecord, str]:
        """Grant now or raise Refusal (NO_CAPACITY, NEVER_FITS, NODE_DRAINING, CONFLICT...).

        With a request id the lease id is derived from it, so the lease key itself makes a retried
        acquire idempotent: whichever daemon the retry reaches finds the lease instead of granting twice.
        """
        if self._view.node(spec.node) is None:
            raise Refusal(reasons.NODE_NOT_FOUND, f"node {spec.node!r} is not up in this pool")
        lease_id = f"lease-{hash_secret(spec.request_id)[:12]}" if spec.request_id else f"lease-{secrets.token_hex(6)}"
        if spec.request_id:
            existing = await self._existing_grant(lease_id, spec.request_id, read_store=False)
            if existing is not None:
                return existing
        token = lease_token(lease_id, spec.request_id)
        if self._view.node_config(spec.node).value.draining:
            raise Refusal(reasons.NODE_DRAINING, f"node {spec.node} is draining and takes no new work")
        first = place(spec.shape, self.candidates(spec.node), lease_id)
        if isinstance(first, Unplaceable):
            # A retry whose first attempt was granted (answer lost) may find no room left: look it up.
            existing = await self._existing_grant(lease_id, spec.request_id) if spec.request_id else None
            if existing is not None:
                return existing
            raise Refusal(reasons.NEVER_FITS if first.never else reasons.NO_CAPACITY, first.message)
        liveness = await self.liveness.take(spec.ttl_seconds)

        def build(overlay: Overlay) -> LeaseRecord:
            granted = overlay.lease(lease_id)
            if granted is not None:  # a retry of this request won the race elsewhere
                return granted
            if overlay.node_config(spec.node, guard=True).draining:
                raise Refusal(reasons.NODE_DRAINING, f"node {spec.node} is draining and takes no new work")
            result = place(spec.shape, self.candidates(spec.node, overlay), lease_id)
            if isinstance(result, Unplaceable):
                raise Refusal(reasons.NEVER_FITS if result.never else reasons.NO_CAPACITY, result.message)
            for view, claim in result.assignments:
                overlay.put_gpu_state(view.record.uuid, overlay.gpu_state(view.record.uuid).with_claim(claim))
            record = self._record(spec, lease_id, token, liveness, result)
            overlay.put_lease(record, new=True)
            overlay.stage(Put(self._keys.alive(lease_id), b"", lease=liveness))
            return record

        record = await self._writes.submit(build)
        if record.state.ended:
            raise _reused(record)
        log.debug("lease granted", lease=lease_id, slices=len(record.slices))
        return record, token

    def _record(self, spec: AcquireSpec, lease_id: str, token: str, liveness: int, placement: Placement) -> LeaseRecord:
        slices = tuple(
            SliceRecord(
                node=view.record.node,
                gpu_uuid=view.record.uuid,
                gpu_index=view.record.index,
                gpu_model=view.record.model,
                isolation=claim.isolation,
                memory_bytes=claim.memory_bytes,
                compute_milli=claim.compute_milli,
            )
            for view, claim in placement.assignments
        )
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
        )

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
        left = await self._store.refresh(lease.liveness_lease, timeout=self._timeout)
        if left <= 0:
            ended = await self.end(lease.id, LeaseState.EXPIRED, reasons.END_EXPIRED, "heartbeat came too late")
            raise Refusal(reasons.LEASE_ENDED, _ended_message(ended))
        return left

    # -- end ---------------------------------------------------------------------------------------
    async def end(self, lease_id: str, state: LeaseState, reason: str, message: str) -> LeaseRecord:
        """Move a lease to a terminal state and free its claims; ending an ended lease returns it."""
        current = await self.lookup(lease_id)
        if current is None:
            raise Refusal(reasons.LEASE_NOT_FOUND, f"no lease {lease_id!r}")
        if current.value.state.ended:
            return current.value
        history = await self._history_lease()

        def build(overlay: Overlay) -> LeaseRecord:
            lease = overlay.lease(lease_id)
            if lease is None:
                raise Refusal(reasons.LEASE_NOT_FOUND, f"no lease {lease_id!r}")
            if lease.state.ended:
                return lease
            check_transition(lease.state, state)
            ended = lease.ended_as(state, reason, message, self._clock())
            for uuid in sorted({s.gpu_uuid for s in lease.slices}):
                overlay.put_gpu_state(uuid, overlay.gpu_state(uuid).without_lease(lease_id))
            overlay.put_lease(ended, store_lease=history)
            overlay.stage(Delete(self._keys.alive(lease_id)))
            return ended

        ended = await self._writes.submit(build, fallback=current)
        # The liveness lease has no keys left; etcd expires it within its TTL, which costs this daemon
        # nothing, where a revoke would cost one more round trip per release.
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

    # -- admin -------------------------------------------------------------------------------------
    async def set_mode(self, uuid: str, mode: GpuMode) -> GpuState:
        """Change a GPU's mode; refused while any claim is on it."""
        record = self._view.gpu(uuid)
        if record is None:
            raise Refusal(reasons.GPU_NOT_FOUND, f"no GPU {uuid!r} is registered (see vgpuctl gpus)")
        if mode is GpuMode.MIG:
            if not record.mig_capable:
                raise Refusal(reasons.INVALID_REQUEST, f"{record.model} GPUs cannot run MIG; use shared or exclusive")
            raise Refusal(reasons.NOT_IMPLEMENTED, "MIG mode arrives with MIG slices; use shared or exclusive")

        def build(overlay: Overlay) -> GpuState:
            current = overlay.gpu_state(uuid)
            if current.claims:
                holders = sorted({c.lease_id for c in current.claims})
                raise Refusal(
                    reasons.GPU_BUSY,
                    f"GPU {uuid} has {len(holders)} lease(s) ({', '.join(holders[:5])}); release or evict them first",
                )
            new_state = replace(current, mode=mode)
            overlay.put_gpu_state(uuid, new_state)
            return new_state

        return await self._writes.submit(build)

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

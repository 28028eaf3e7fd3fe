"""A daemon's cached view of the pool: list once, then follow etcd's watch from the listed revision.

Reads (placement, vgpuctl listings, heartbeat token checks) are served from here; writes still go to
etcd as transactions that compare mod revisions, so a stale view costs a retry, never an over-commit.
A daemon's own committed writes are applied at once (`apply_committed`) so its next read sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import GpuRecord, GpuState, LeaseState, NodeConfig, NodeRecord
from vgpud._private.core.projects import Quota
from vgpud._private.core.queued import QueuedRequest
from vgpud._private.registry import Keys
from vgpud._private.store.base import CompactedError, Delete, EventType, KeyValue, Op, Put, Store, StoreError

log = structlog.get_logger("vgpud.pool_view")
T = TypeVar("T")

_ENDED_KEPT = 4096
_CREATED = operator.attrgetter("created")


@dataclass(slots=True)
class Versioned(Generic[T]):
    """A record and the etcd mod revision it was read at."""

    value: T
    revision: int


@dataclass(slots=True)
class _Tables:
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    nodecfg: dict[str, Versioned[NodeConfig]] = field(default_factory=dict)
    gpus: dict[str, GpuRecord] = field(default_factory=dict)
    gpus_by_node: dict[str, dict[str, GpuRecord]] = field(default_factory=dict)
    gpustate: dict[str, Versioned[GpuState]] = field(default_factory=dict)
    leases: dict[str, Versioned[LeaseRecord]] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    queue: dict[str, Queued] = field(default_factory=dict)
    leader: Versioned[str] | None = None
    projects: dict[str, Versioned[Quota]] = field(default_factory=dict)
    suspended: dict[str, str] = field(default_factory=dict)
    """Suspended lease id -> the node it must resume on ("" for any node)."""
    waiting_by_owner: dict[str, int] = field(default_factory=dict)
    """Live (not refused) queued requests per owner (`waiter_of`), for the per-user cap."""
    holding_by_target: dict[str, int] = field(default_factory=dict)
    """Live queued requests that wait for capacity (wait=True), per target node ("" for any node)."""


def _bump_count(counts: dict[str, int], key: str, step: int) -> None:
    left = counts.get(key, 0) + step
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def waiter_of(request: QueuedRequest) -> str:
    """Whom a queued request counts against for the per-user cap: its verified owner."""
    owner = request.lease.owner
    return owner.user or owner.identity


@dataclass(frozen=True, slots=True)
class Queued:
    """A waiting request with the etcd facts the queue needs: arrival order and the lease it hangs on."""

    request: QueuedRequest
    created: int
    """Create revision of its key: the pool-wide arrival order."""
    revision: int
    """Mod revision, for guarded rewrites."""
    store_lease: int


class PoolView:
    """In-memory copy of one cluster's keys, kept current by a watch task."""

    def __init__(self, store: Store, keys: Keys, *, timeout: float) -> None:
        self._store = store
        self._keys = keys
        self._timeout = timeout
        self._t = _Tables()
        self._ended: OrderedDict[str, Versioned[LeaseRecord]] = OrderedDict()
        self._revisions: dict[str, int] = {}
        self._tombstones: dict[str, int] = {}
        self._revision = 0
        self._ready = asyncio.Event()
        self._change = asyncio.Event()
        self._generation = 0
        self._lease_listeners: dict[str, set[asyncio.Queue[Versioned[LeaseRecord]]]] = {}
        self._request_listeners: dict[str, set[asyncio.Event]] = {}
        self.on_liveness_lost: Callable[[str], None] = lambda _lease_id: None
        """Called with a lease id whose alive key vanished while the lease was live (expiry)."""

    # -- reads -------------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The newest etcd revision this view has applied."""
        return self._revision

    @property
    def generation(self) -> int:
        """Bumped on every change; pass to wait_changed."""
        return self._generation

    def nodes(self) -> dict[str, NodeRecord]:
        """Live nodes by name."""
        return dict(self._t.nodes)

    def node_config(self, name: str) -> Versioned[NodeConfig]:
        """A node's admin settings (defaults, revision 0, when never set)."""
        return self._t.nodecfg.get(name, Versioned(NodeConfig(), 0))

    def node_configs(self) -> dict[str, NodeConfig]:
        """Every node's admin settings."""
        return {k: v.value for k, v in self._t.nodecfg.items()}

    def gpus(self) -> dict[str, GpuRecord]:
        """Every registered GPU by uuid (a copy: for listings, not the acquire path)."""
        return dict(self._t.gpus)

    def node(self, name: str) -> NodeRecord | None:
        """One live node, without copying the table."""
        return self._t.nodes.get(name)

    def gpu(self, uuid: str) -> GpuRecord | None:
        """One registered GPU, without copying the table."""
        return self._t.gpus.get(uuid)

    def nodes_with_gpus(self) -> set[str]:
        """Names of the nodes that have GPUs registered, live or not (from the per-node index)."""
        return {node for node, gpus in self._t.gpus_by_node.items() if gpus}

    def gpus_of(self, node: str) -> list[GpuRecord]:
        """The GPUs registered for `node`, by uuid: placement's candidates, from a per-node index."""
        return [record for _, record in sorted(self._t.gpus_by_node.get(node, {}).items())]

    def gpu_state(self, uuid: str) -> Versioned[GpuState]:
        """A GPU's mode and claims with its revision (fresh state, revision 0, when absent)."""
        return self._t.gpustate.get(uuid, Versioned(GpuState(), 0))

    def live_leases(self) -> list[Versioned[LeaseRecord]]:
        """Leases not yet ended."""
        return list(self._t.leases.values())

    def lease(self, lease_id: str) -> Versioned[LeaseRecord] | None:
        """A live or recently ended lease, if this view has it."""
        return self._t.leases.get(lease_id) or self._ended.get(lease_id)

    def ended_leases(self) -> list[Versioned[LeaseRecord]]:
        """Recently ended leases still in memory."""
        return list(self._ended.values())

    def queue(self) -> list[Queued]:
        """Waiting requests of the whole pool in arrival order."""
        return sorted(self._t.queue.values(), key=_CREATED)

    def waiting_count(self, owner: str | None = None) -> int:
        """Live (not refused) queued requests: of the whole pool, or of one owner (`waiter_of`)."""
        counts = self._t.waiting_by_owner
        return counts.get(owner, 0) if owner is not None else sum(counts.values())

    def queued(self, lease_id: str) -> Queued | None:
        """One waiting request, if it is still queued."""
        return self._t.queue.get(lease_id)

    def suspended(self) -> dict[str, str]:
        """Suspended leases waiting to resume, with the node each must resume on ("" for any)."""
        return self._t.suspended

    def quotas(self) -> dict[str, Quota]:
        """Every project's quota by name."""
        return {name: v.value for name, v in self._t.projects.items()}

    def quota(self, name: str) -> Versioned[Quota] | None:
        """One project's quota with its revision (None when no quota is set)."""
        return self._t.projects.get(name)

    def leader(self) -> Versioned[str] | None:
        """The elected leader's node name and its election key's revision (None when nobody leads)."""
        return self._t.leader

    def key_revision(self, key: str) -> int:
        """The mod revision this view holds for `key` (0: absent), e.g. of a project's guard key."""
        return self._revisions.get(key, 0)

    def is_alive(self, lease_id: str) -> bool:
        """Whether the lease's liveness key exists."""
        return lease_id in self._t.alive

    async def wait_ready(self) -> None:
        """Until the first listing is loaded."""
        await self._ready.wait()

    async def wait_changed(self, generation: int, timeout: float | None = None) -> bool:
        """Until the view changes past `generation`; False on timeout."""
        if self._generation != generation:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._change.wait()
        return self._generation != generation

    def listen_lease(self, lease_id: str) -> asyncio.Queue[Versioned[LeaseRecord]]:
        """A queue that receives every new version of one lease; call unlisten_lease when done."""
        queue: asyncio.Queue[Versioned[LeaseRecord]] = asyncio.Queue()
        self._lease_listeners.setdefault(lease_id, set()).add(queue)
        return queue

    def unlisten_lease(self, lease_id: str, queue: asyncio.Queue[Versioned[LeaseRecord]]) -> None:
        """Stop delivering to `queue`."""
        listeners = self._lease_listeners.get(lease_id)
        if listeners is not None:
            listeners.discard(queue)
            if not listeners:
                del self._lease_listeners[lease_id]

    def listen_request(self, lease_id: str) -> asyncio.Event:
        """An event set whenever queue/<lease_id> or leases/<lease_id> changes; call unlisten_request when done."""
        event = asyncio.Event()
        self._request_listeners.setdefault(lease_id, set()).add(event)
        return event

    def unlisten_request(self, lease_id: str, event: asyncio.Event) -> None:
        """Stop setting `event`."""
        listeners = self._request_listeners.get(lease_id)
        if listeners is not None:
            listeners.discard(event)
            if not listeners:
                del self._request_listeners[lease_id]

    def _request_changed(self, lease_id: str) -> None:
        for event in self._request_listeners.get(lease_id, ()):
            event.set()

    def _count_waiting(self, queued: Queued | None, step: int) -> None:
        if queued is None or queued.request.refused:
            return
        _bump_count(self._t.waiting_by_owner, waiter_of(queued.request), step)
        if queued.request.wait:
            _bump_count(self._t.holding_by_target, queued.request.target_node, step)

    def waiting_for_capacity(self, node: str) -> bool:
        """Whether a live queued request waits for capacity that `node` could give (its own, or any node)."""
        counts = self._t.holding_by_target
        return counts.get("", 0) > 0 or counts.get(node, 0) > 0

    # -- upkeep ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """List, then watch; re-list after compaction or a broken watch. Runs until cancelled."""
        backoff = 0.1
        while True:
            try:
                snapshot = await self._store.get_prefix(self._keys.root, timeout=self._timeout)
                self._load(snapshot.kvs, snapshot.revision)
                backoff = 0.1
                async for event in self._store.watch_prefix(self._keys.root, start_revision=snapshot.revision + 1):
                    if event.type is EventType.PUT:
                        self._put(event.kv.key, event.kv.value, event.kv.mod_revision, kv=event.kv)
                    else:
                        self._delete(event.kv.key, event.kv.mod_revision)
                    self._advance(event.kv.mod_revision)
            except CompactedError:
                log.info("watch compacted; re-listing")
            except StoreError as exc:
                log.warning("pool watch broke; re-listing", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def apply_committed(self, ops: Sequence[Op], revision: int, parsed: Mapping[str, object] | None = None) -> None:
        """Apply this daemon's own successful transaction now instead of waiting for the watch.

        `parsed` maps keys to the records their values were serialised from, to skip parsing them again.
        """
        for op in ops:
            if isinstance(op, Put):
                own = KeyValue(op.key, op.value, create_revision=0, mod_revision=revision, lease=op.lease)
                self._put(op.key, op.value, revision, parsed=parsed.get(op.key) if parsed else None, kv=own)
            elif isinstance(op, Delete) and not op.prefix:
                self._delete(op.key, revision)
        self._bump()

    def refresh_key(self, kv: KeyValue | None, key: str) -> None:
        """Apply a direct read of one key (after a failed compare) so the retry sees it."""
        if kv is None:
            current = self._revisions.get(key)
            if current is not None:
                self._delete(key, current + 1)
        else:
            self._put(kv.key, kv.value, kv.mod_revision, kv=kv)
        self._bump()

    def _load(self, kvs: Sequence[KeyValue], revision: int) -> None:
        previous_live = set(self._t.leases)
        self._t = _Tables()
        self._revisions.clear()
        self._tombstones.clear()
        for kv in kvs:
            self._put(kv.key, kv.value, kv.mod_revision, notify=False, kv=kv)
        for events in self._request_listeners.values():  # a re-list may have dropped or changed any request
            for event in events:
                event.set()
        self._revision = max(self._revision, revision)
        self._ready.set()
        self._bump()
        for lease_id in set(self._t.leases) | previous_live:
            if lease_id in self._t.leases and lease_id not in self._t.alive:
                self.on_liveness_lost(lease_id)

    def _advance(self, revision: int) -> None:
        self._revision = max(self._revision, revision)
        for key in [k for k, r in self._tombstones.items() if r <= revision]:
            del self._tombstones[key]
        self._bump()

    def _bump(self) -> None:
        self._generation += 1
        fired, self._change = self._change, asyncio.Event()
        fired.set()

    def _stale(self, key: str, revision: int) -> bool:
        if self._revisions.get(key, 0) >= revision:
            return True
        return self._tombstones.get(key, 0) >= revision

    def _put(
        self,
        key: str,
        value: bytes,
        revision: int,
        *,
        notify: bool = True,
        parsed: object | None = None,
        kv: KeyValue | None = None,
    ) -> None:
        if self._stale(key, revision):
            return
        where = self._keys.split(key)
        if where is None:
            return
        kind, name = where
        try:
            self._store_record(kind, name, value, revision, notify=notify, parsed=parsed, kv=kv)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable record in etcd; ignoring it", key=key, error=str(exc))  # noqa: TRY400 -- no trace needed
            return
        self._revisions[key] = revision
        self._tombstones.pop(key, None)

    def _store_record(  # noqa: PLR0912 -- one branch per key kind reads best as a flat dispatch
        self,
        kind: str,
        name: str,
        value: bytes,
        revision: int,
        *,
        notify: bool,
        parsed: object | None,
        kv: KeyValue | None,
    ) -> None:
        t = self._t
        if kind == "queue":
            request = parsed if isinstance(parsed, QueuedRequest) else QueuedRequest.from_json(value)
            earlier = t.queue.get(name)
            created = (kv.create_revision if kv else 0) or (earlier.created if earlier else revision)
            store_lease = kv.lease if kv else (earlier.store_lease if earlier else 0)
            self._count_waiting(earlier, -1)
            t.queue[name] = Queued(request, created, revision, store_lease)
            self._count_waiting(t.queue[name], +1)
            self._request_changed(name)
        elif kind == "leader":
            t.leader = Versioned(value.decode(errors="replace"), revision)
        elif kind == "projects":
            t.projects[name] = Versioned(parsed if isinstance(parsed, Quota) else Quota.from_json(value), revision)
        elif kind == "nodes":
            t.nodes[name] = NodeRecord.from_json(value)
        elif kind == "nodecfg":
            config = parsed if isinstance(parsed, NodeConfig) else NodeConfig.from_json(value)
            t.nodecfg[name] = Versioned(config, revision)
        elif kind == "gpus":
            gpu = GpuRecord.from_json(value)
            previous = t.gpus.get(name)
            if previous is not None and previous.node != gpu.node:
                t.gpus_by_node.get(previous.node, {}).pop(name, None)
            t.gpus[name] = gpu
            t.gpus_by_node.setdefault(gpu.node, {})[name] = gpu
        elif kind == "gpustate":
            state = parsed if isinstance(parsed, GpuState) else GpuState.from_json(value)
            t.gpustate[name] = Versioned(state, revision)
        elif kind == "alive":
            t.alive.add(name)
        elif kind == "leases":
            lease = parsed if isinstance(parsed, LeaseRecord) else LeaseRecord.from_json(value)
            record = Versioned(lease, revision)
            if lease.state is LeaseState.SUSPENDED:
                t.suspended[name] = lease.target_node
            else:
                t.suspended.pop(name, None)
            if record.value.state.ended:
                t.leases.pop(name, None)
                self._ended[name] = record
                self._ended.move_to_end(name)
                while len(self._ended) > _ENDED_KEPT:
                    self._ended.popitem(last=False)
            else:
                t.leases[name] = record
            if notify:
                for queue in self._lease_listeners.get(name, ()):
                    queue.put_nowait(record)
            self._request_changed(name)

    def _delete(self, key: str, revision: int) -> None:  # noqa: PLR0912 -- one branch per key kind, as in _store_record
        if self._stale(key, revision):
            return
        parsed = self._keys.split(key)
        self._revisions.pop(key, None)
        self._tombstones[key] = revision
        if parsed is None:
            return
        kind, name = parsed
        t = self._t
        if kind == "nodes":
            t.nodes.pop(name, None)
        elif kind == "nodecfg":
            t.nodecfg.pop(name, None)
        elif kind == "gpus":
            gone = t.gpus.pop(name, None)
            if gone is not None:
                t.gpus_by_node.get(gone.node, {}).pop(name, None)
        elif kind == "gpustate":
            t.gpustate.pop(name, None)
        elif kind == "leases":
            t.leases.pop(name, None)
            t.suspended.pop(name, None)
            self._ended.pop(name, None)
            self._request_changed(name)
        elif kind == "queue":
            self._count_waiting(t.queue.pop(name, None), -1)
            self._request_changed(name)
        elif kind == "leader":
            t.leader = None
        elif kind == "projects":
            t.projects.pop(name, None)
        elif kind == "alive":
            t.alive.discard(name)
            if name in t.leases:
                self.on_liveness_lost(name)

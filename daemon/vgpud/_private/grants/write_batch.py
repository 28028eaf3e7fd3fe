"""Group commit: the capacity writes that arrive together go to etcd as one guarded transaction.

Each write is a pure `build(overlay)` that reads the pool through an Overlay (the view plus the writes
of earlier items in the same batch), guards the keys it depends on, and stages its puts. One
transaction then compares every guarded key's revision as the view had it and applies all puts. If
another daemon moved a guarded key, the keys are re-read and the whole batch is built again. A
daemon's own writers therefore never race each other, and under load many grants share one etcd
round trip. Writes that raise a limited project's holdings also guard that project's key
(project_gate.py), so a project's limit holds against every other daemon's grants too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog

from vgpu._private import reasons
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import GpuState, NodeConfig
from vgpud._private.core.project_limits import held_by
from vgpud._private.core.projects import Usage, project_of
from vgpud._private.grants.project_gate import caught_up, check_raise, is_gate, limit_of
from vgpud._private.pool_view import PoolView, Versioned
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys
from vgpud._private.store.base import Compare, ModRevisionIs, Op, Put, Store, StoreError

log = structlog.get_logger("vgpud.write_batch")

T = TypeVar("T")
_MAX_ATTEMPTS = 16
MAX_BATCH = 24
"""Items per transaction; keeps a batch well under etcd's default --max-txn-ops of 128."""


class Fence(Protocol):
    """Proof that this daemon still leads: a compare every leader write carries."""

    def compare(self) -> Compare | None:
        """The guard on the election key as this leader created it; None when it does not lead now."""
        ...


@dataclass(frozen=True, slots=True)
class _Saved:
    guards: dict[str, int]
    gpu_states: dict[str, GpuState]
    leases: dict[str, tuple[LeaseRecord, int]]
    node_configs: dict[str, NodeConfig]
    extra: int
    gates: set[str]


class Overlay:
    """Reads through the pool view, overridden by what earlier items of this batch staged."""

    def __init__(self, view: PoolView, keys: Keys) -> None:
        self._view = view
        self._keys = keys
        self.guards: dict[str, int] = {}
        self.gpu_states: dict[str, GpuState] = {}
        self.leases: dict[str, tuple[LeaseRecord, int]] = {}
        self.node_configs: dict[str, NodeConfig] = {}
        self.extra: list[Op] = []
        self.fallback_leases: dict[str, Versioned[LeaseRecord]] = {}
        self.gates: set[str] = set()
        """Guard keys of the limited projects whose holdings this batch raises (each rewritten once)."""

    @property
    def view(self) -> PoolView:
        """The pool view this overlay reads through."""
        return self._view

    def checkpoint(self) -> _Saved:
        """What rollback needs to forget a build that refused halfway."""
        return _Saved(
            dict(self.guards),
            dict(self.gpu_states),
            dict(self.leases),
            dict(self.node_configs),
            len(self.extra),
            set(self.gates),
        )

    def rollback(self, saved: _Saved) -> None:
        """Undo everything staged since `checkpoint`."""
        self.guards, self.gpu_states, self.leases = saved.guards, saved.gpu_states, saved.leases
        self.node_configs, self.gates = saved.node_configs, saved.gates
        del self.extra[saved.extra :]

    def _guard(self, key: str, revision: int) -> None:
        self.guards.setdefault(key, revision)

    def guard(self, key: str, revision: int) -> None:
        """Make the batch fail if `key` moved from `revision` (0: if it appeared) since it was read."""
        self._guard(key, revision)

    # -- GPU states ---------------------------------------------------------------------------------
    def gpu_state(self, uuid: str) -> GpuState:
        """The GPU's state including this batch's staged changes."""
        staged = self.gpu_states.get(uuid)
        return staged if staged is not None else self._view.gpu_state(uuid).value

    def put_gpu_state(self, uuid: str, state: GpuState) -> None:
        """Stage a new state, guarding the one it replaces."""
        self._guard(self._keys.gpustate(uuid), self._view.gpu_state(uuid).revision)
        self.gpu_states[uuid] = state

    # -- node settings ------------------------------------------------------------------------------
    def node_config(self, node: str, *, guard: bool = False) -> NodeConfig:
        """A node's settings; with guard, the batch fails if another writer changes them."""
        staged = self.node_configs.get(node)
        base = self._view.node_config(node)
        if guard:
            self._guard(self._keys.nodecfg(node), base.revision)
        return staged if staged is not None else base.value

    def put_node_config(self, node: str, config: NodeConfig) -> None:
        """Stage new node settings."""
        self._guard(self._keys.nodecfg(node), self._view.node_config(node).revision)
        self.node_configs[node] = config

    # -- leases -------------------------------------------------------------------------------------
    def lease(self, lease_id: str) -> LeaseRecord | None:
        """A lease including staged changes (or the copy read from etcd when the view lacks it)."""
        staged = self.leases.get(lease_id)
        if staged is not None:
            return staged[0]
        cached = self._view.lease(lease_id) or self.fallback_leases.get(lease_id)
        return cached.value if cached is not None else None

    def put_lease(self, record: LeaseRecord, *, store_lease: int = 0, new: bool = False) -> None:
        """Stage a lease record; a new one guards that its key is absent.

        One that raises a limited project's holdings is refused past the limit (Refusal OVER_QUOTA) and
        guards the project's key.
        """
        quota = limit_of(self._view, project_of(record))
        before = self.lease(record.id) if quota is not None else None
        key = self._keys.lease(record.id)
        if new:
            self._guard(key, 0)
        else:
            cached = self._view.lease(record.id) or self.fallback_leases.get(record.id)
            self._guard(key, cached.revision if cached is not None else 0)
        self.leases[record.id] = (record, store_lease)
        if quota is not None:
            check_raise(self, quota, before, record)

    def project_held(self, project: str) -> Usage:
        """What `project` holds, with this batch's staged leases in place of the versions the view has."""
        leases = {v.value.id: v.value for v in self._view.live_leases() if project_of(v.value) == project}
        leases.update((i, r) for i, (r, _) in self.leases.items() if project_of(r) == project)
        return held_by(project, leases.values())

    def gate(self, project: str) -> None:
        """Guard the project's key at the revision the view holds, and rewrite it in this batch."""
        key = self._keys.projgate(project)
        self._guard(key, self._view.key_revision(key))
        self.gates.add(key)

    def stage(self, op: Op) -> None:
        """An op without a read behind it (liveness keys, idempotency keys)."""
        self.extra.append(op)

    def ops(self) -> list[Op]:
        """Every staged write, one put per record key."""
        out: list[Op] = [Put(self._keys.gpustate(u), s.to_json()) for u, s in self.gpu_states.items()]
        out += [Put(self._keys.nodecfg(n), c.to_json()) for n, c in self.node_configs.items()]
        out += [Put(self._keys.lease(i), r.to_json(), lease=sl) for i, (r, sl) in self.leases.items()]
        out += [Put(key, b"") for key in self.gates]
        return out + self.extra

    def parsed(self) -> dict[str, object]:
        """Staged records by key, so the view need not parse what was just serialised."""
        out: dict[str, object] = {self._keys.gpustate(u): s for u, s in self.gpu_states.items()}
        out.update({self._keys.nodecfg(n): c for n, c in self.node_configs.items()})
        out.update({self._keys.lease(i): r for i, (r, _) in self.leases.items()})
        return out

    def compares(self) -> list[Compare]:
        """The guards as transaction compares."""
        return [ModRevisionIs(key, revision) for key, revision in self.guards.items()]


@dataclass(eq=False, slots=True)
class _Write(Generic[T]):
    build: Callable[[Overlay], T]
    outcome: asyncio.Future[T]
    fallback: Versioned[LeaseRecord] | None = None


@dataclass(slots=True)
class WriteBatcher:
    """Queues writes and commits them in batches, one batch in flight at a time."""

    store: Store
    keys: Keys
    view: PoolView
    timeout: float
    fence: Fence | None = None
    """Set for the leader's writer: every transaction also proves leadership, so a deposed one writes nothing."""
    _pending: list[_Write[Any]] = field(default_factory=list)
    _writer: asyncio.Task[None] | None = None

    async def submit(self, build: Callable[[Overlay], T], *, fallback: Versioned[LeaseRecord] | None = None) -> T:
        """Run `build` in the next batch and wait for the commit; Refusals from build come back here."""
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(build, outcome, fallback))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return await outcome

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await self._commit(batch)
            except StoreError as exc:
                for item in batch:
                    if not item.outcome.done():
                        item.outcome.set_exception(exc)
            except Exception as exc:
                log.exception("write batch failed")
                for item in batch:
                    if not item.outcome.done():
                        item.outcome.set_exception(Refusal(reasons.INTERNAL, f"write batch failed: {exc}"))

    async def _commit(self, batch: list[_Write[Any]]) -> None:
        for _ in range(_MAX_ATTEMPTS):
            overlay = Overlay(self.view, self.keys)
            results = self._build(batch, overlay)
            ops = overlay.ops()
            if ops:
                compares = overlay.compares()
                if self.fence is not None:
                    proof = self.fence.compare()
                    if proof is None:
                        self._fail(batch, Refusal(reasons.NO_LEADER, "this daemon does not lead the pool now; retry"))
                        return
                    compares.append(proof)
                txn = await self.store.txn(compares, ops, timeout=self.timeout)
                if not txn.succeeded:
                    if not await self._reread([c.key for c in compares]):
                        self._fail(batch, Refusal(reasons.CONFLICT, "this daemon's view of the pool lags etcd; retry"))
                        return
                    continue
                self.view.apply_committed(ops, txn.revision, overlay.parsed())
            for item, result in results:
                if item.outcome.done():
                    continue
                if isinstance(result, Refusal):
                    item.outcome.set_exception(result)
                else:
                    item.outcome.set_result(result)
            return
        self._fail(batch, Refusal(reasons.CONFLICT, "the pool kept changing under this write; retry"))

    @staticmethod
    def _fail(batch: list[_Write[Any]], refusal: Refusal) -> None:
        for item in batch:
            if not item.outcome.done():
                item.outcome.set_exception(refusal)

    @staticmethod
    def _build(batch: list[_Write[Any]], overlay: Overlay) -> list[tuple[_Write[Any], object]]:
        """Run every live item's build against one overlay; a refusing build leaves nothing staged."""
        results: list[tuple[_Write[Any], object]] = []
        for item in batch:
            if item.outcome.done():
                continue
            if item.fallback is not None:
                overlay.fallback_leases[item.fallback.value.id] = item.fallback
            saved = overlay.checkpoint()
            try:
                results.append((item, item.build(overlay)))
            except Refusal as refusal:
                overlay.rollback(saved)
                results.append((item, refusal))
        return results

    async def _reread(self, keys: list[str]) -> bool:
        """Bring the view up to the guarded keys after a failed compare; False if it cannot be done in time.

        A project's guard key is left to the watch (and waited for): read on its own it would run ahead of
        the leases granted beside it, and the rebuild would miss them.
        """
        results = await asyncio.gather(*(self.store.get(k, timeout=self.timeout) for k in keys))
        moved: dict[str, int] = {}
        for key, kv in zip(keys, results, strict=True):
            if kv is not None and is_gate(self.keys, key):
                moved[key] = kv.mod_revision
            else:
                self.view.refresh_key(kv, key)
        return not moved or await caught_up(self.view, moved, self.timeout)

"""The node watchdog: holds leases to their memory budget and stops the processes of revoked leases.

Every `interval_s` it maps this host's processes to leases (process_map), reads their GPU memory and
utilisation (NVML on real GPUs; on simulated GPUs the runtimes' heartbeat reports), and then:
- a lease with shared slices whose processes use more memory than its budget gets a warning (a WARNING
  event carrying what was seen and a deadline); still over at the deadline, it is revoked
  (MEMORY_BUDGET_EXCEEDED). MIG and whole-GPU slices are bounded by the hardware and not checked;
- the processes of a lease revoked for a missed preemption deadline or its memory budget get SIGTERM, and
  SIGKILL `kill_grace_s` later if they are still there.
Each daemon looks after the processes of its own host: those that reported to it and those started with the
environment of a lease that has slices on its node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import structlog

from vgpu._private import reasons
from vgpu._private.units import format_memory
from vgpud._private import process_map
from vgpud._private.auth.local_users import uid_of
from vgpud._private.auth.signal_policy import owner_uid, refusal_to_signal
from vgpud._private.backend.base import BackendError, GpuBackend, ProcessGpuUse
from vgpud._private.config_watchdog import WatchdogConfig
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import Isolation, LeaseState
from vgpud._private.grants.allocator import Allocator
from vgpud._private.grants.write_batch import Overlay
from vgpud._private.pool_view import PoolView
from vgpud._private.refusal import Refusal
from vgpud._private.store.base import StoreError

log = structlog.get_logger("vgpud.watchdog")

KILL_REASONS = frozenset({reasons.END_PREEMPT_MISSED, reasons.END_OVER_BUDGET})
"""End reasons whose processes the watchdog stops: the pool has already given their GPUs to others."""
_KEEP_ENDED_S = 600.0
"""How long after a lease ended its reports are kept (its processes may outlive it)."""


@dataclass(slots=True)
class _Report:
    memory_bytes: int | None
    utilization_milli: int | None
    identity_socket: str


@dataclass(frozen=True, slots=True)
class LeaseUse:
    """What one lease's processes on this host use, as the watchdog last saw it."""

    lease_id: str
    project: str
    pids: frozenset[int]
    memory_bytes: int | None
    """None when neither NVML nor the runtime said."""
    utilization: float | None
    """Busy share of the lease's devices here (0 to 1: NVML's SM use summed over its processes, averaged over
    its GPUs or MIG instances), None when neither NVML nor the runtime said."""
    budget_bytes: int


@dataclass(slots=True)
class _Signalled:
    lease_id: str
    first_at: float
    killed: bool = False


@dataclass(slots=True)
class _Round:
    """What one pass found: per lease, its local pids, and per pid what NVML saw."""

    pids: dict[str, set[int]] = field(default_factory=dict)
    gpu_use: dict[int, list[ProcessGpuUse]] | None = None


class NodeWatchdog:
    """One per daemon; `observe` takes heartbeat reports, `run` is the loop."""

    def __init__(
        self,
        *,
        config: WatchdogConfig,
        node: str,
        view: PoolView,
        allocator: Allocator,
        backend: GpuBackend,
        on_action: Callable[[str], None] = lambda _action: None,
        clock: Callable[[], float] = time.time,
        send_signal: Callable[[int, int], None] = os.kill,
    ) -> None:
        self._config = config
        self._node = node
        self._view = view
        self._allocator = allocator
        self._backend = backend
        self._on_action = on_action
        self._clock = clock
        self._send_signal = send_signal
        self._reports: dict[str, _Report] = {}
        self._signalled: dict[int, _Signalled] = {}
        self._protected = process_map.protected_pids()
        self.uses: dict[str, LeaseUse] = {}
        """The last pass's findings, for `vgpuctl top`, the usage ledger and the metrics."""

    def observe(self, lease: LeaseRecord, *, reported: bool, memory: int, utilization_milli: int, socket: str) -> None:
        """Take one heartbeat's usage report (the socket name was validated by the RPC layer)."""
        earlier = self._reports.get(lease.id)
        self._reports[lease.id] = _Report(
            memory_bytes=memory if reported else (earlier.memory_bytes if earlier else None),
            utilization_milli=utilization_milli if reported else (earlier.utilization_milli if earlier else None),
            identity_socket=socket or (earlier.identity_socket if earlier else ""),
        )

    async def run(self) -> None:
        """Check every interval until cancelled; a failing pass is logged and the next one tries again."""
        while True:
            try:
                await self.check()
            except (StoreError, BackendError) as exc:
                log.warning("watchdog pass failed; trying again", error=str(exc))
            await asyncio.sleep(self._config.interval_s)

    async def check(self) -> None:
        """One pass: map processes, measure, warn, revoke, signal."""
        now = self._clock()
        leases = self._candidates(now)
        if not leases and not self._signalled:  # nothing of this host to look at: no /proc, NVML or sockets
            self.uses = {}
            self._forget_old(now)
            return
        found = await asyncio.to_thread(self._map, leases)
        uses = {lease.id: self._use_of(lease, found) for lease in leases.values() if not lease.state.ended}
        self.uses = {k: v for k, v in uses.items() if v.pids or v.memory_bytes is not None}
        for lease_id, use in self.uses.items():
            await self._hold_to_budget(leases[lease_id], use, now)
        await asyncio.to_thread(self._stop_processes, leases, found, now)
        self._forget_old(now)

    # -- which leases, which processes -------------------------------------------------------------
    def _candidates(self, now: float) -> dict[str, LeaseRecord]:
        """Live leases with something on this host, and recently ended ones whose processes must stop."""
        found: dict[str, LeaseRecord] = {}
        for versioned in self._view.live_leases():
            lease = versioned.value
            if lease.id in self._reports or self._local(lease):
                found[lease.id] = lease
        for versioned in self._view.ended_leases():
            lease = versioned.value
            recent = now - lease.ended_at < _KEEP_ENDED_S
            if recent and lease.end_reason in KILL_REASONS and (lease.id in self._reports or self._local(lease)):
                found[lease.id] = lease
        return found

    def _local(self, lease: LeaseRecord) -> bool:
        return any(s.node == self._node for s in lease.slices) or (not lease.slices and lease.node == self._node)

    def _map(self, leases: Mapping[str, LeaseRecord]) -> _Round:
        """Blocking: /proc, identity sockets and NVML."""
        found = _Round()
        by_env = process_map.environment_leases([lid for lid, lease in leases.items() if self._local(lease)])
        for lease_id, pids in by_env.items():
            found.pids.setdefault(lease_id, set()).update(pids)
        for lease_id, lease in leases.items():
            report = self._reports.get(lease_id)
            if report is None or not report.identity_socket:
                continue
            peer = process_map.peer(report.identity_socket)
            if peer is not None and lease.token_sha256 in peer.token_digests:
                found.pids.setdefault(lease_id, set()).add(peer.pid)
        found.pids = {k: {p for p in v if p not in self._protected} for k, v in found.pids.items()}
        local_gpus = {g.uuid for g in self._view.gpus_of(self._node)}
        listed = self._backend.processes(local_gpus) if local_gpus else None
        if listed is not None:
            found.gpu_use = {}
            for item in listed:
                found.gpu_use.setdefault(item.pid, []).append(item)
        return found

    def _use_of(self, lease: LeaseRecord, found: _Round) -> LeaseUse:
        pids = frozenset(found.pids.get(lease.id, set()))
        shared = [s for s in lease.slices if s.isolation is Isolation.SHARED]
        budget = sum(s.memory_bytes for s in shared)
        memory: int | None = None
        busy: float | None = None
        if found.gpu_use is not None and pids:
            devices = {s.mig_uuid or s.gpu_uuid for s in lease.slices}
            seen = [u for pid in pids for u in found.gpu_use.get(pid, []) if (u.mig_uuid or u.gpu_uuid) in devices]
            memory = sum(u.memory_bytes or 0 for u in seen)
            percents = [u.sm_percent for u in seen if u.sm_percent is not None]
            busy = min(1.0, sum(percents) / 100 / len(devices)) if percents else None
        report = self._reports.get(lease.id)
        if report is not None:
            if memory is None:
                memory = report.memory_bytes
            if busy is None and report.utilization_milli is not None:
                busy = report.utilization_milli / 1000
        return LeaseUse(lease.id, lease.project, pids, memory, busy, budget)

    # -- memory budget ------------------------------------------------------------------------------
    async def _hold_to_budget(self, lease: LeaseRecord, use: LeaseUse, now: float) -> None:
        if lease.state is not LeaseState.GRANTED or not use.budget_bytes or use.memory_bytes is None:
            return
        over = use.memory_bytes > use.budget_bytes
        if not over:
            if lease.warning:
                await self._set_warning(lease.id, "", 0.0)
            return
        if not lease.warning:
            deadline = now + self._config.over_budget_grace_s
            text = (
                f"processes of lease {lease.id} use {format_memory(use.memory_bytes)} of GPU memory, over its "
                f"budget of {format_memory(use.budget_bytes)}: free memory within "
                f"{self._config.over_budget_grace_s:g}s or the lease is revoked"
            )
            log.warning("lease over its memory budget", lease=lease.id, used=use.memory_bytes, budget=use.budget_bytes)
            self._on_action("warning")
            await self._set_warning(lease.id, text, deadline)
            return
        if now >= lease.warning_deadline:
            message = (
                f"used {format_memory(use.memory_bytes)} of GPU memory for over "
                f"{self._config.over_budget_grace_s:g}s, over the budget of {format_memory(use.budget_bytes)}"
            )
            log.warning("revoking a lease over its memory budget", lease=lease.id)
            self._on_action("revoke")
            with contextlib.suppress(Refusal):  # it ended meanwhile
                await self._allocator.end(lease.id, LeaseState.REVOKED, reasons.END_OVER_BUDGET, message)

    async def _set_warning(self, lease_id: str, text: str, deadline: float) -> None:
        def build(overlay: Overlay) -> None:
            lease = overlay.lease(lease_id)
            if lease is None or lease.state is not LeaseState.GRANTED or lease.warning == text:
                return
            overlay.put_lease(replace(lease, warning=text, warning_deadline=deadline, event="warning"))

        await self._allocator.commit(build)

    # -- stopping processes -------------------------------------------------------------------------
    def _stop_processes(self, leases: Mapping[str, LeaseRecord], found: _Round, now: float) -> None:
        """Blocking: SIGTERM the processes of leases revoked for cause, SIGKILL those still there later."""
        if not self._config.kill:
            return
        for lease_id, lease in leases.items():
            if not (lease.state.ended and lease.end_reason in KILL_REASONS):
                continue
            owner = owner_uid(lease, self._node, uid_of)
            for pid in found.pids.get(lease_id, set()):
                if pid in self._signalled or not process_map.alive(pid):
                    continue
                why_not = refusal_to_signal(
                    process_map.process_uids(pid), owner, allow_root=self._config.signal_root_processes
                )
                if why_not is not None:
                    log.warning("not stopping a process of a revoked lease", lease=lease_id, pid=pid, why=why_not)
                    self._signalled[pid] = _Signalled(lease_id, now, killed=True)  # never asked again
                    continue
                log.warning("stopping a process of a revoked lease", lease=lease_id, pid=pid, reason=lease.end_reason)
                self._signal(pid, signal.SIGTERM, "sigterm")
                self._signalled[pid] = _Signalled(lease_id, now)
        for pid, record in list(self._signalled.items()):
            if not process_map.alive(pid):
                del self._signalled[pid]
            elif not record.killed and now - record.first_at >= self._config.kill_grace_s:
                log.warning("killing a process of a revoked lease", lease=record.lease_id, pid=pid)
                self._signal(pid, signal.SIGKILL, "sigkill")
                record.killed = True

    def _signal(self, pid: int, sig: int, action: str) -> None:
        try:
            self._send_signal(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            log.warning("cannot signal the process (the daemon should run as root)", pid=pid, error=str(exc))
            return
        self._on_action(action)

    def _forget_old(self, now: float) -> None:
        for lease_id in list(self._reports):
            versioned = self._view.lease(lease_id)
            if versioned is None or (versioned.value.state.ended and now - versioned.value.ended_at > _KEEP_ENDED_S):
                del self._reports[lease_id]

"""The loop that keeps the metrics current: every few seconds, a fresh node snapshot and, on the leader, the pool's.

It runs on the daemon's event loop (the pool view is not thread-safe) and hands finished snapshots to the
scrape thread. Leadership is read once per round, so `vgpu_leader` and the pool-wide series always agree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog

from vgpud._private.backend.base import BackendError, DeviceUse, GpuBackend
from vgpud._private.core.priorities import PriorityClasses
from vgpud._private.fair_pass import WaitingCache, waiting_entries
from vgpud._private.metrics.daemon_metrics import DaemonMetrics
from vgpud._private.metrics.measure import gpu_series, lease_series, pool_snapshot, project_use, reported_gpu_use
from vgpud._private.metrics.snapshots import NodeSnapshot, PoolSnapshot
from vgpud._private.node_watchdog import LeaseUse
from vgpud._private.pool_view import PoolView

log = structlog.get_logger("vgpud.metrics")

INTERVAL_S = 2.0


class MetricsFeed:
    """One per daemon: `run` refreshes the snapshots until cancelled; `update` is one round."""

    def __init__(
        self,
        metrics: DaemonMetrics,
        *,
        view: PoolView,
        node: str,
        backend: GpuBackend,
        leading: Callable[[], bool],
        uses: Callable[[], Mapping[str, LeaseUse]],
        classes: PriorityClasses,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`leading`: whether this daemon leads the pool now; `uses`: the node watchdog's last findings."""
        self._metrics = metrics
        self._view = view
        self._node = node
        self._backend = backend
        self._leading = leading
        self._uses = uses
        self._classes = classes
        self._clock = clock
        self._waiting = WaitingCache()
        self._device_failed = False

    async def run(self) -> None:
        """Update every INTERVAL_S until cancelled."""
        while True:
            await self.update()
            await asyncio.sleep(INTERVAL_S)

    async def update(self) -> None:
        """One round: read the GPUs (in a worker thread: NVML blocks), then publish both snapshots."""
        records = self._view.gpus_of(self._node)
        device = await self._device_use([r.uuid for r in records])
        view = self._view
        leases = {v.value.id: v.value for v in view.live_leases()}
        uses = self._uses()
        leading = self._leading()
        node = NodeSnapshot(
            leader=leading,
            gpus=gpu_series(
                records,
                {r.uuid: view.gpu_state(r.uuid).value for r in records},
                reported_gpu_use(leases.values(), self._node, uses),
                device,
                simulated=self._backend.name == "sim",
            ),
            projects=project_use(leases.values(), self._node, uses),
            leases=lease_series(leases, uses),
        )
        pool: PoolSnapshot | None = None
        if leading:
            waiting = waiting_entries(view, self._classes, self._waiting)
            pool = pool_snapshot(leases.values(), view.quotas(), waiting, self._clock())
        self._metrics.publish(node, pool)

    async def _device_use(self, uuids: list[str]) -> Mapping[str, DeviceUse]:
        try:
            found = await asyncio.to_thread(self._backend.device_use, uuids)
        except BackendError as exc:
            if not self._device_failed:
                log.warning("cannot read GPU use from NVML; the leases' reports stand in", error=str(exc))
            self._device_failed = True
            return {}
        self._device_failed = False
        return found

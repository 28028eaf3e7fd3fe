"""The optional per-node components vgpud starts next to serving: MPS, MIG realiser, watchdog, usage ledger.

Each is built from its config table and started as a background task of the daemon; one that is switched
off is None, and the daemon serves without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from vgpud._private.backend.base import DiscoveredGpu, GpuBackend
from vgpud._private.config import DaemonConfig
from vgpud._private.grants.allocator import Allocator
from vgpud._private.metrics import DaemonMetrics
from vgpud._private.mig_realiser import MigRealiser
from vgpud._private.mps_control import MpsDaemons, MpsError
from vgpud._private.node_watchdog import NodeWatchdog
from vgpud._private.pool_view import PoolView
from vgpud._private.registry import Keys
from vgpud._private.store.base import Store
from vgpud._private.usage_ledger import UsageLedger

StartTask = Callable[[Coroutine[Any, Any, None], str], None]
"""Runs a coroutine as a named background task of the daemon (cancelled at shutdown)."""


class StartupError(Exception):
    """vgpud cannot start; the message says what to change."""


@dataclass(frozen=True, slots=True)
class NodeParts:
    """What the components share: this node's config, GPUs' backend, key layout, metrics and task starter."""

    config: DaemonConfig
    backend: GpuBackend
    keys: Keys
    metrics: DaemonMetrics
    start_task: StartTask
    store_timeout: float

    async def start_mps(self, gpus: list[DiscoveredGpu]) -> tuple[MpsDaemons | None, dict[str, str]]:
        """With [mps] enabled: one MPS control daemon per GPU not in MIG mode, and GPU UUID -> its pipe dir.

        StartupError when one cannot start (the message says what to install or set).
        """
        if not self.config.mps.enabled:
            return None, {}
        mps = MpsDaemons(self.config.mps)
        try:
            pipes = await asyncio.to_thread(mps.start, [g.uuid for g in gpus if not g.mig_enabled])
        except MpsError as exc:
            raise StartupError(str(exc)) from None
        return mps, pipes

    def start_realiser(self, view: PoolView, allocator: Allocator) -> None:
        """The MIG realiser: creates and destroys this node's MIG instances as leases need them."""
        cfg = self.config
        realiser = MigRealiser(
            self.backend,
            allocator,
            view,
            self.keys,
            cfg.node_name,
            keep_warm_s=cfg.mig.keep_warm_s,
            auto_mode=cfg.mig.auto_mode,
        )
        self.start_task(realiser.run(), "mig-realiser")

    def start_watchdog(self, view: PoolView, allocator: Allocator) -> NodeWatchdog | None:
        """The node watchdog, running (None when [watchdog] enabled is false)."""
        if not self.config.watchdog.enabled:
            return None
        watchdog = NodeWatchdog(  # what it measures reaches the metrics through `watchdog.uses` (metrics/feed.py)
            config=self.config.watchdog,
            node=self.config.node_name,
            view=view,
            allocator=allocator,
            backend=self.backend,
            on_action=self.metrics.count_watchdog_action,
        )
        self.start_task(watchdog.run(), "node-watchdog")
        return watchdog

    async def start_ledger(self, store: Store, view: PoolView, watchdog: NodeWatchdog | None) -> UsageLedger | None:
        """The allocation vs. use ledger, carried on from etcd and running (None when [accounting] is off)."""
        if not self.config.accounting.enabled:
            return None
        ledger = UsageLedger(
            config=self.config.accounting,
            store=store,
            keys=self.keys,
            view=view,
            node=self.config.node_name,
            uses=(lambda: watchdog.uses) if watchdog is not None else dict,
            timeout=self.store_timeout,
        )
        await ledger.load()
        self.start_task(ledger.run(), "usage-ledger")
        return ledger

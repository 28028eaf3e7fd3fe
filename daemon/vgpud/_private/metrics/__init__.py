"""vgpud's Prometheus metrics.

Who exports what (so that summing over scrape targets adds up):
- every series carries `node="<node name>"`, the daemon that exported it;
- per-node series (this node's GPUs, its leases' and projects' measured use, the events this daemon
  handled, `process_*`, `python_*`) come from every daemon;
- pool-wide series (leases by state, the queue, each project's allocation) only from the pool leader,
  and are absent elsewhere; `vgpu_leader` is 1 there and 0 on the others.

Names follow Prometheus' conventions (metrics/naming.py checks them): base units (`_bytes`, `_seconds`),
`_ratio` for shares in 0..1, `_gpus` for compute in whole-GPU units, `_total` for counters.
"""

from __future__ import annotations

from vgpud._private.metrics.daemon_metrics import DaemonMetrics
from vgpud._private.metrics.snapshots import (
    GpuSeries,
    LeaseUseSeries,
    NodeSnapshot,
    PoolSnapshot,
    ProjectAllocation,
    ProjectUse,
)

__all__ = [
    "DaemonMetrics",
    "GpuSeries",
    "LeaseUseSeries",
    "NodeSnapshot",
    "PoolSnapshot",
    "ProjectAllocation",
    "ProjectUse",
]

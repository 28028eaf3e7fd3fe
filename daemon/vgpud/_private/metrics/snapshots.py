"""What a scrape shows of the node and the pool: immutable snapshots, and the collector that turns them into series.

The daemon's event loop builds a snapshot every few seconds (metrics/feed.py) and swaps it in whole; the HTTP
server's thread only reads the reference, so a scrape never sees a half-updated view. Series whose snapshot
says nothing (a GPU NVML cannot read, a project nothing measured) are absent, not zero; pool-wide series are
absent on every daemon but the leader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True)
class GpuSeries:
    """One GPU of this node: capacity, what leases hold, and what is measured in use."""

    uuid: str
    model: str
    memory_capacity_bytes: int
    memory_allocated_bytes: int
    compute_allocated_ratio: float
    """Share of the GPU's compute held by leases (0..1)."""
    memory_used_bytes: int | None = None
    """NVML's device reading on real GPUs, the leases' runtime reports on simulated ones; None: unknown."""
    utilization_ratio: float | None = None
    """Share of time the GPU was busy (0..1), from the same sources; None: unknown."""


@dataclass(frozen=True, slots=True)
class ProjectUse:
    """What one project's leases measurably use on this node (None: nothing of it was measured here)."""

    memory_used_bytes: int | None
    compute_used_gpus: float | None
    """GPUs' worth of busy time (utilisation x the devices it was measured over), as `vgpuctl top` counts."""


@dataclass(frozen=True, slots=True)
class LeaseUseSeries:
    """One lease's processes on this node, as the node watchdog last measured them."""

    lease: str
    project: str
    memory_used_bytes: int | None
    utilization_ratio: float | None


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """Everything this node exports about itself."""

    leader: bool = False
    gpus: tuple[GpuSeries, ...] = ()
    projects: Mapping[str, ProjectUse] = field(default_factory=dict)
    leases: tuple[LeaseUseSeries, ...] = ()


@dataclass(frozen=True, slots=True)
class ProjectAllocation:
    """One project in the whole pool, as `vgpuctl quota list` shows it."""

    compute_gpus: float
    memory_bytes: int
    leases: int
    """Leases holding capacity."""
    waiting: int
    """Requests in the queue, suspended leases included."""


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The pool-wide series: exported by the leader only, so that summing over scrape targets counts them once."""

    leases_by_state: Mapping[str, int]
    queue_length: int
    oldest_wait_seconds: float
    projects: Mapping[str, ProjectAllocation]


_GPU = ("gpu", "model")
_LEASE = ("lease", "project")


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class SnapshotCollector(Collector):
    """Yields the series of the latest node and pool snapshots, swapped in together by `publish`."""

    def __init__(self) -> None:
        """Start with an empty node (not the leader) and no pool series."""
        self._latest: tuple[NodeSnapshot, PoolSnapshot | None] = (NodeSnapshot(), None)

    def publish(self, node: NodeSnapshot, pool: PoolSnapshot | None) -> None:
        """Replace both snapshots at once (one reference swap: a scrape sees the old pair or the new one)."""
        self._latest = (node, pool)

    def collect(self) -> Iterator[Metric]:
        """Node series always, pool series while the snapshot says this daemon leads."""
        node, pool = self._latest
        yield from node_families(node)
        if pool is not None and node.leader:
            yield from pool_families(pool)


def node_families(node: NodeSnapshot) -> Iterator[Metric]:
    """This node's series: leadership, its GPUs, its projects' and leases' measured use."""
    leader = _gauge("vgpu_leader", "1 on the daemon that leads the pool (and alone exports pool-wide series), else 0")
    leader.add_metric([], 1.0 if node.leader else 0.0)
    yield leader
    gpu: list[tuple[str, str, Callable[[GpuSeries], float | None]]] = [
        ("vgpu_gpu_memory_capacity_bytes", "GPU memory the pool may hand out", lambda g: g.memory_capacity_bytes),
        ("vgpu_gpu_memory_allocated_bytes", "GPU memory held by leases", lambda g: g.memory_allocated_bytes),
        (
            "vgpu_gpu_compute_allocated_ratio",
            "Share of the GPU's compute held by leases (0..1)",
            lambda g: g.compute_allocated_ratio,
        ),
        (
            "vgpu_gpu_memory_used_bytes",
            "GPU memory in use: NVML on real GPUs, the leases' runtime reports on simulated ones",
            lambda g: g.memory_used_bytes,
        ),
        (
            "vgpu_gpu_utilization_ratio",
            "Share of time the GPU was busy (0..1): NVML on real GPUs, the runtime reports on simulated ones",
            lambda g: g.utilization_ratio,
        ),
    ]
    for name, documentation, value in gpu:
        family = _gauge(name, documentation, _GPU)
        for g in node.gpus:
            measured = value(g)
            if measured is not None:
                family.add_metric([g.uuid, g.model], measured)
        yield family
    memory = _gauge(
        "vgpu_project_memory_used_bytes", "GPU memory the project's leases use on this node, as measured", ("project",)
    )
    compute = _gauge(
        "vgpu_project_compute_used_gpus",
        "GPUs' worth of busy time of the project's leases on this node (utilisation x devices), as measured",
        ("project",),
    )
    for name, use in sorted(node.projects.items()):
        if use.memory_used_bytes is not None:
            memory.add_metric([name], use.memory_used_bytes)
        if use.compute_used_gpus is not None:
            compute.add_metric([name], use.compute_used_gpus)
    yield memory
    yield compute
    lease_memory = _gauge(
        "vgpu_lease_memory_used_bytes",
        "GPU memory the lease's processes on this node use (NVML, or the runtime's report on simulated GPUs)",
        _LEASE,
    )
    lease_busy = _gauge(
        "vgpu_lease_utilization_ratio",
        "Share of time the lease's processes kept its devices busy (0..1), as last measured",
        _LEASE,
    )
    for lease in node.leases:
        if lease.memory_used_bytes is not None:
            lease_memory.add_metric([lease.lease, lease.project], lease.memory_used_bytes)
        if lease.utilization_ratio is not None:
            lease_busy.add_metric([lease.lease, lease.project], lease.utilization_ratio)
    yield lease_memory
    yield lease_busy


def pool_families(pool: PoolSnapshot) -> Iterator[Metric]:
    """The pool-wide series (leases, queue, projects' allocation), from the leader's view."""
    leases = _gauge("vgpu_leases", "Live leases of the whole pool by state", ("state",))
    for state, count in sorted(pool.leases_by_state.items()):
        leases.add_metric([state], count)
    yield leases
    queue = _gauge("vgpu_queue_length", "Requests waiting for capacity in the whole pool, suspended leases included")
    queue.add_metric([], pool.queue_length)
    yield queue
    oldest = _gauge("vgpu_queue_oldest_wait_seconds", "How long the longest-waiting request has waited (0: none)")
    oldest.add_metric([], pool.oldest_wait_seconds)
    yield oldest
    rows: list[tuple[str, str, Callable[[ProjectAllocation], float]]] = [
        (
            "vgpu_project_compute_allocated_gpus",
            "GPUs' compute held by the project's live leases",
            lambda p: p.compute_gpus,
        ),
        (
            "vgpu_project_memory_allocated_bytes",
            "GPU memory held by the project's live leases",
            lambda p: p.memory_bytes,
        ),
        ("vgpu_project_leases", "The project's leases holding capacity", lambda p: p.leases),
        (
            "vgpu_project_waiting_requests",
            "The project's requests in the queue, suspended leases too",
            lambda p: p.waiting,
        ),
    ]
    for name, documentation, value in rows:
        family = _gauge(name, documentation, ("project",))
        for project, allocation in sorted(pool.projects.items()):
            family.add_metric([project], value(allocation))
        yield family

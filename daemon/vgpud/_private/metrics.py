"""vgpud's Prometheus metrics, in a registry of their own (never the process-global default).

The daemon sets gauges from its pool view every few seconds and observes acquires and RPC errors as they
happen; `start_http` serves the registry for scraping.
"""

from __future__ import annotations

import contextlib
import errno
import platform
import threading
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    start_http_server,
)

# 1 ms (an uncontended local acquire) .. 60 s (a queued one).
ACQUIRE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_GPU_LABELS = ("node", "gpu", "model")


def _vgpu_version() -> str:
    try:
        return version("vgpu")
    except PackageNotFoundError:
        return "unknown"


class DaemonMetrics:
    """Every metric vgpud exports, with setters named for what the daemon knows."""

    def __init__(self) -> None:
        """Create the registry and its metrics; nothing is served until start_http."""
        self.registry = CollectorRegistry()
        r = self.registry
        self._capacity = Gauge(
            "vgpu_gpu_memory_capacity_bytes", "GPU memory the pool may hand out", _GPU_LABELS, registry=r
        )
        self._memory_allocated = Gauge(
            "vgpu_gpu_memory_allocated_bytes", "GPU memory held by leases", _GPU_LABELS, registry=r
        )
        self._compute_allocated = Gauge(
            "vgpu_gpu_compute_allocated_milli",
            "GPU compute held by leases, in milli-GPU (1000 = whole)",
            _GPU_LABELS,
            registry=r,
        )
        self._leases = Gauge("vgpu_leases", "Live leases by state", ["state"], registry=r)
        self._queue_length = Gauge("vgpu_queue_length", "Acquire requests waiting for capacity", registry=r)
        self._acquire_latency = Histogram(
            "vgpu_acquire_latency_seconds",
            "Time from acquire request to answer, by outcome",
            ["outcome"],
            buckets=ACQUIRE_BUCKETS,
            registry=r,
        )
        self._preemption = Histogram(
            "vgpu_preemption_seconds",
            "Time from the PREEMPT decision to the lease's slices being freed, by outcome (acknowledged, missed)",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self._project_milli = Gauge(
            "vgpu_project_allocated_milli", "Milli-GPU held by each project's live leases", ["project"], registry=r
        )
        self._rpc_errors = Counter(
            "vgpu_rpc_errors_total",
            "RPCs that ended in an error, by method and gRPC code",
            ["method", "code"],
            registry=r,
        )
        self._lease_memory = Gauge(
            "vgpu_lease_memory_used_bytes",
            "GPU memory the lease's processes on this node use (NVML, or the runtime's report on simulated GPUs)",
            ["lease", "project"],
            registry=r,
        )
        self._lease_busy = Gauge(
            "vgpu_lease_utilization_ratio",
            "Share of time the lease's processes kept the GPU busy (0..1), as last measured",
            ["lease", "project"],
            registry=r,
        )
        self._refusals = Counter(
            "vgpu_auth_refusals_total",
            "Calls refused for identity or permission, by method and ErrorInfo reason",
            ["method", "reason"],
            registry=r,
        )
        self._watchdog_actions = Counter(
            "vgpu_watchdog_actions_total",
            "What the node watchdog did: warning, revoke (memory budget), sigterm, sigkill",
            ["action"],
            registry=r,
        )
        self._position_messages = Counter(
            "vgpu_queue_position_messages", "Queue position updates sent to waiting clients", registry=r
        )
        self._queue_refusals = Counter(
            "vgpu_queue_refusals",
            "Acquire requests refused by a queue cap (max_queue_length, ...)",
            ["cap"],
            registry=r,
        )
        self._connections = Gauge("vgpu_socket_connections", "Open connections to the Unix socket", registry=r)
        self._connection_refusals = Counter(
            "vgpu_socket_connection_refusals",
            "Unix socket connections closed at once by a [limits] cap, by cap",
            ["cap"],
            registry=r,
        )
        self._log_dropped = Counter(
            "vgpu_log_dropped",
            "Log lines left out by rate limiting (the events were counted), by event",
            ["event"],
            registry=r,
        )
        self._lease_series: set[tuple[str, str]] = set()
        self._build = Info("vgpu_build", "vgpud build", registry=r)
        self._build.info({"version": _vgpu_version(), "python": platform.python_version()})
        self._server: tuple[WSGIServer, threading.Thread] | None = None

    def set_gpu(  # noqa: PLR0917 -- one positional value per label and gauge, as the daemon calls it
        self, node: str, uuid: str, model: str, capacity: int, mem_alloc: int, compute_alloc: int
    ) -> None:
        """Capacity and allocation of one GPU (bytes, bytes, milli-GPU)."""
        self._capacity.labels(node, uuid, model).set(capacity)
        self._memory_allocated.labels(node, uuid, model).set(mem_alloc)
        self._compute_allocated.labels(node, uuid, model).set(compute_alloc)

    def forget_gpu(self, node: str, uuid: str, model: str) -> None:
        """Drop a GPU's series (it left the pool)."""
        for gauge in (self._capacity, self._memory_allocated, self._compute_allocated):
            try:
                gauge.remove(node, uuid, model)
            except KeyError:
                continue

    def set_leases(self, counts: Mapping[str, int]) -> None:
        """Live lease count per state name."""
        for state, count in counts.items():
            self._leases.labels(state).set(count)

    def set_queue_length(self, n: int) -> None:
        """Requests waiting in the acquire queue."""
        self._queue_length.set(n)

    def observe_acquire(self, seconds: float, outcome: str) -> None:
        """One acquire's latency and how it ended ("granted", "queued", an error reason, ...)."""
        self._acquire_latency.labels(outcome).observe(seconds)

    def observe_preemption(self, seconds: float, outcome: str) -> None:
        """One preemption: how long from the decision until its slices were free, and how it ended."""
        self._preemption.labels(outcome).observe(max(0.0, seconds))

    def set_project_allocation(self, milli: Mapping[str, int]) -> None:
        """Milli-GPU held per project (projects no longer holding anything are set to 0)."""
        for project, value in milli.items():
            self._project_milli.labels(project).set(value)

    def set_lease_use(self, uses: Iterable[tuple[str, str, int | None, float | None]]) -> None:
        """(lease, project, memory bytes, utilization) of the leases watched now; series of others are dropped."""
        current: set[tuple[str, str]] = set()
        for lease, project, memory, busy in uses:
            current.add((lease, project))
            if memory is not None:
                self._lease_memory.labels(lease, project).set(memory)
            if busy is not None:
                self._lease_busy.labels(lease, project).set(busy)
        for gone in self._lease_series - current:
            for gauge in (self._lease_memory, self._lease_busy):
                with contextlib.suppress(KeyError):  # never set for this lease
                    gauge.remove(*gone)
        self._lease_series = current

    def count_watchdog_action(self, action: str) -> None:
        """One thing the node watchdog did."""
        self._watchdog_actions.labels(action).inc()

    def count_refusal(self, method: str, reason: str) -> None:
        """One call refused for identity or permission (the audit trail has who and what)."""
        self._refusals.labels(method, reason).inc()

    def count_rpc_error(self, method: str, code: str) -> None:
        """One RPC that failed with gRPC status `code`."""
        self._rpc_errors.labels(method, code).inc()

    def count_position_message(self) -> None:
        """One queue position update sent."""
        self._position_messages.inc()

    def count_queue_refusal(self, cap: str) -> None:
        """One acquire refused by the queue cap `cap`."""
        self._queue_refusals.labels(cap).inc()

    def set_socket_connections(self, n: int) -> None:
        """Connections open on the Unix socket now."""
        self._connections.set(n)

    def count_connection_refusal(self, cap: str) -> None:
        """One connection closed at once by the cap `cap`."""
        self._connection_refusals.labels(cap).inc()

    def count_log_dropped(self, event: str, n: int = 1) -> None:
        """Log lines about `event` left out by rate limiting."""
        self._log_dropped.labels(event).inc(n)

    def render(self) -> bytes:
        """The exposition text a scrape would get."""
        return generate_latest(self.registry)

    def start_http(self, host: str, port: int) -> None:
        """Serve /metrics on host:port in a daemon thread; OSError naming the port when it cannot bind."""
        if self._server is not None:
            raise RuntimeError("metrics endpoint already started")
        try:
            self._server = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            err = OSError(f"cannot serve metrics on {host}:{port}: {reason}; choose another --metrics-port")
            err.errno = exc.errno
            raise err from None

    @property
    def http_port(self) -> int | None:
        """The bound port while serving (useful when started on port 0)."""
        return self._server[0].server_port if self._server is not None else None

    def stop_http(self) -> None:
        """Stop serving; a no-op when not started."""
        if self._server is None:
            return
        server, thread = self._server
        self._server = None
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

"""DaemonMetrics: every series vgpud exports, in registries of its own, labelled with the node that exports them.

Events (acquires, refusals, watchdog actions, ...) are counted as they happen on this daemon; the node and
pool snapshots come from metrics/feed.py. The standard `process_*` and `python_*` collectors ride along.
Every sample is served with `node="<node name>"` added, so series from several daemons never collide and a
sum over scrape targets adds each node once.
"""

from __future__ import annotations

import copy
import errno
import platform
import threading
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from vgpud._private.metrics.snapshots import NodeSnapshot, PoolSnapshot, SnapshotCollector

# 1 ms (an uncontended local acquire) .. 60 s (a queued one).
ACQUIRE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PREEMPTION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
NODE_LABEL = "node"


def _vgpu_version() -> str:
    try:
        return version("vgpu")
    except PackageNotFoundError:
        return "unknown"


class _NodeLabelled(Collector):
    """Serves another registry's metrics with `node` added to every sample."""

    def __init__(self, inner: CollectorRegistry, node: str) -> None:
        self._inner = inner
        self._node = node

    def collect(self) -> Iterator[Metric]:
        """Each inner metric, copied with the label set (over any inner `node` label: this daemon exported it)."""
        for metric in self._inner.collect():
            labelled = copy.copy(metric)
            labelled.samples = [s._replace(labels={**s.labels, NODE_LABEL: self._node}) for s in metric.samples]
            yield labelled


class DaemonMetrics:
    """Every metric vgpud exports, with setters named for what the daemon knows."""

    def __init__(self, node: str) -> None:
        """Create the registries and metrics for daemon `node`; nothing is served until start_http."""
        self.node = node
        self.inner = CollectorRegistry()
        """The series before the node label is added (the naming test walks it)."""
        self.registry = CollectorRegistry()
        """What a scrape gets."""
        self.registry.register(_NodeLabelled(self.inner, node))
        r = self.inner
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(standard)
        self._snapshots = SnapshotCollector()
        r.register(self._snapshots)
        self._acquire_latency = Histogram(
            "vgpu_acquire_latency_seconds",
            "Time from acquire request to answer on this daemon, by outcome",
            ["outcome"],
            buckets=ACQUIRE_BUCKETS,
            registry=r,
        )
        self._preemption = Histogram(
            "vgpu_preemption_seconds",
            "Time from the PREEMPT decision to the lease's slices being freed, by outcome (acknowledged, missed)",
            ["outcome"],
            buckets=PREEMPTION_BUCKETS,
            registry=r,
        )
        self._rpc_errors = Counter(
            "vgpu_rpc_errors_total",
            "RPCs that ended in an error, by method and gRPC code",
            ["method", "code"],
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
            "vgpu_queue_position_messages_total", "Queue position updates sent to waiting clients", registry=r
        )
        self._queue_refusals = Counter(
            "vgpu_queue_refusals_total",
            "Acquire requests refused by a queue cap (max_queue_length, ...)",
            ["cap"],
            registry=r,
        )
        self._connections = Gauge("vgpu_socket_connections", "Open connections to the Unix socket", registry=r)
        self._connection_refusals = Counter(
            "vgpu_socket_connection_refusals_total",
            "Unix socket connections closed at once by a [limits] cap, by cap",
            ["cap"],
            registry=r,
        )
        self._log_dropped = Counter(
            "vgpu_log_dropped_total",
            "Log lines left out by rate limiting (the events were counted), by event",
            ["event"],
            registry=r,
        )
        self._build = Info("vgpu_build", "vgpud build", registry=r)
        self._build.info({"version": _vgpu_version(), "python": platform.python_version()})
        self._server: tuple[WSGIServer, threading.Thread] | None = None

    def publish(self, node: NodeSnapshot, pool: PoolSnapshot | None) -> None:
        """The latest node snapshot and, on the leader, the pool's (None elsewhere: those series go absent)."""
        self._snapshots.publish(node, pool)

    def observe_acquire(self, seconds: float, outcome: str) -> None:
        """One acquire's latency and how it ended ("granted", "queued", an error reason, ...)."""
        self._acquire_latency.labels(outcome).observe(seconds)

    def observe_preemption(self, seconds: float, outcome: str) -> None:
        """One preemption: how long from the decision until its slices were free, and how it ended."""
        self._preemption.labels(outcome).observe(max(0.0, seconds))

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
        """Serve /metrics on host:port in a daemon thread; OSError naming the address when it cannot bind."""
        if self._server is not None:
            raise RuntimeError("metrics endpoint already started")
        try:
            self._server = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            err = OSError(
                f"cannot serve metrics on {host}:{port}: {reason}; choose another --metrics-port or --metrics-host"
            )
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

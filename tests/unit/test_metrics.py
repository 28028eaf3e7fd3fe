"""DaemonMetrics: what a scrape shows (node label, leader-only pool series, standard collectors), names, HTTP."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from vgpud._private.metrics import (
    DaemonMetrics,
    GpuSeries,
    LeaseUseSeries,
    NodeSnapshot,
    PoolSnapshot,
    ProjectAllocation,
    ProjectUse,
)
from vgpud._private.metrics.naming import problems

GiB = 2**30
GPU = GpuSeries("GPU-1", "h100-80gb", 85520809984, 20 * GiB, 0.5, memory_used_bytes=3 * GiB, utilization_ratio=0.25)
UNREAD = GpuSeries("GPU-2", "h100-80gb", 85520809984, 0, 0.0)
NODE = NodeSnapshot(
    leader=True,
    gpus=(GPU, UNREAD),
    projects={"vision": ProjectUse(3 * GiB, 0.25), "nlp": ProjectUse(None, 0.5)},
    leases=(LeaseUseSeries("l1", "vision", 3 * GiB, 0.25),),
)
POOL = PoolSnapshot(
    leases_by_state={"granted": 3, "pending": 1},
    queue_length=7,
    oldest_wait_seconds=12.5,
    projects={"vision": ProjectAllocation(2.5, 40 * GiB, 3, 2), "nlp": ProjectAllocation(0.0, 0, 0, 5)},
)


@pytest.fixture
def metrics() -> Iterator[DaemonMetrics]:
    m = DaemonMetrics("node-a")
    yield m
    m.stop_http()


def samples(m: DaemonMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and label set."""
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(m: DaemonMetrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, frozenset({"node": m.node, **labels}.items())))


def test_every_sample_carries_the_node_label(metrics: DaemonMetrics) -> None:
    metrics.publish(NODE, POOL)
    metrics.observe_acquire(0.004, "granted")
    metrics.count_rpc_error("Acquire", "RESOURCE_EXHAUSTED")
    scraped = samples(metrics)
    assert scraped
    assert all(dict(labels).get("node") == "node-a" for _name, labels in scraped)
    names = {name for name, _labels in scraped}
    assert {"process_cpu_seconds_total", "python_info", "python_gc_objects_collected_total"} <= names


def test_gpu_series_and_leadership(metrics: DaemonMetrics) -> None:
    metrics.publish(NODE, POOL)
    gpu = {"gpu": "GPU-1", "model": "h100-80gb"}
    assert value(metrics, "vgpu_gpu_memory_capacity_bytes", **gpu) == 85520809984
    assert value(metrics, "vgpu_gpu_memory_allocated_bytes", **gpu) == 20 * GiB
    assert value(metrics, "vgpu_gpu_compute_allocated_ratio", **gpu) == 0.5
    assert value(metrics, "vgpu_gpu_memory_used_bytes", **gpu) == 3 * GiB
    assert value(metrics, "vgpu_gpu_utilization_ratio", **gpu) == 0.25
    unread = {"gpu": "GPU-2", "model": "h100-80gb"}
    assert value(metrics, "vgpu_gpu_memory_capacity_bytes", **unread) == 85520809984
    assert value(metrics, "vgpu_gpu_memory_used_bytes", **unread) is None  # unknown: absent, not 0
    assert value(metrics, "vgpu_leader") == 1
    assert value(metrics, "vgpu_project_memory_used_bytes", project="vision") == 3 * GiB
    assert value(metrics, "vgpu_project_memory_used_bytes", project="nlp") is None
    assert value(metrics, "vgpu_project_compute_used_gpus", project="nlp") == 0.5
    assert value(metrics, "vgpu_lease_memory_used_bytes", lease="l1", project="vision") == 3 * GiB


def test_pool_series_on_the_leader(metrics: DaemonMetrics) -> None:
    metrics.publish(NODE, POOL)
    assert value(metrics, "vgpu_leases", state="granted") == 3
    assert value(metrics, "vgpu_leases", state="pending") == 1
    assert value(metrics, "vgpu_queue_length") == 7
    assert value(metrics, "vgpu_queue_oldest_wait_seconds") == 12.5
    assert value(metrics, "vgpu_project_compute_allocated_gpus", project="vision") == 2.5
    assert value(metrics, "vgpu_project_memory_allocated_bytes", project="vision") == 40 * GiB
    assert value(metrics, "vgpu_project_leases", project="vision") == 3
    assert value(metrics, "vgpu_project_waiting_requests", project="nlp") == 5
    assert value(metrics, "vgpu_project_compute_allocated_gpus", project="nlp") == 0


@pytest.mark.parametrize(
    ("node", "pool"),
    [(NodeSnapshot(leader=False, gpus=(GPU,)), None), (NodeSnapshot(leader=False, gpus=(GPU,)), POOL)],
    ids=["follower", "stale pool snapshot"],
)
def test_pool_series_are_absent_elsewhere(metrics: DaemonMetrics, node: NodeSnapshot, pool: PoolSnapshot) -> None:
    metrics.publish(node, pool)
    names = {name for name, _labels in samples(metrics)}
    assert value(metrics, "vgpu_leader") == 0
    assert "vgpu_gpu_memory_capacity_bytes" in names
    assert not names & {"vgpu_leases", "vgpu_queue_length", "vgpu_project_compute_allocated_gpus"}


def test_event_series(metrics: DaemonMetrics) -> None:
    metrics.observe_acquire(0.004, "granted")
    metrics.observe_acquire(12.0, "queued")
    metrics.observe_preemption(0.3, "acknowledged")
    metrics.count_rpc_error("Acquire", "RESOURCE_EXHAUSTED")
    metrics.count_rpc_error("Acquire", "RESOURCE_EXHAUSTED")
    metrics.count_queue_refusal("max_queue_length")
    metrics.count_position_message()
    metrics.count_log_dropped("bad_request", 3)
    metrics.set_socket_connections(4)
    assert value(metrics, "vgpu_acquire_latency_seconds_bucket", le="0.005", outcome="granted") == 1
    assert value(metrics, "vgpu_acquire_latency_seconds_bucket", le="0.001", outcome="granted") == 0
    assert value(metrics, "vgpu_acquire_latency_seconds_bucket", le="60.0", outcome="queued") == 1
    assert value(metrics, "vgpu_preemption_seconds_bucket", le="0.5", outcome="acknowledged") == 1
    assert value(metrics, "vgpu_rpc_errors_total", method="Acquire", code="RESOURCE_EXHAUSTED") == 2
    assert value(metrics, "vgpu_queue_refusals_total", cap="max_queue_length") == 1
    assert value(metrics, "vgpu_queue_position_messages_total") == 1
    assert value(metrics, "vgpu_log_dropped_total", event="bad_request") == 3
    assert value(metrics, "vgpu_socket_connections") == 4
    assert "vgpu_build_info{" in metrics.render().decode()


def test_registries_are_separate() -> None:
    a, b = DaemonMetrics("a"), DaemonMetrics("b")
    a.set_socket_connections(5)
    assert value(b, "vgpu_socket_connections") == 0


def test_every_name_follows_the_conventions(metrics: DaemonMetrics) -> None:
    """Walks the registry with every series populated; the rules are in metrics/naming.py."""
    metrics.publish(NODE, POOL)
    metrics.observe_acquire(0.1, "granted")
    metrics.observe_preemption(0.1, "missed")
    metrics.count_refusal("m", "r")
    metrics.count_rpc_error("m", "c")
    metrics.count_watchdog_action("warning")
    metrics.count_position_message()
    metrics.count_queue_refusal("c")
    metrics.count_connection_refusal("c")
    metrics.count_log_dropped("e")
    families = list(metrics.inner.collect())
    assert len([f for f in families if f.name.startswith("vgpu_")]) >= 25
    assert problems(families) == []


def test_the_naming_check_catches_what_it_should() -> None:
    bad: list[Metric] = [
        GaugeMetricFamily("vgpu_project_allocated_milli", "x", value=1),
        GaugeMetricFamily("vgpu_gpu_busy_percent", "x", value=1),
        GaugeMetricFamily("vgpu_things", "x", value=1),
        GaugeMetricFamily("queue_length", "x", value=1),
        GaugeMetricFamily("vgpu_share_ratio", "x", value=1.5),
    ]
    found = problems(bad)
    assert len(found) == 5
    assert "non-base unit (_milli)" in found[0]
    assert "non-base unit (_percent)" in found[1]
    assert "named count" in found[2]
    assert "vgpu_" in found[3]
    assert "outside 0..1" in found[4]


def test_http_serves_the_registry(metrics: DaemonMetrics) -> None:
    metrics.set_socket_connections(3)
    metrics.start_http("127.0.0.1", 0)
    port = metrics.http_port
    assert port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert 'vgpu_socket_connections{node="node-a"} 3.0' in body
    with pytest.raises(RuntimeError, match="already started"):
        metrics.start_http("127.0.0.1", 0)


def test_busy_port_fails_clearly(metrics: DaemonMetrics) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot serve metrics on 127.0.0.1:{port}: the port is in use") as info:
            metrics.start_http("127.0.0.1", port)
    assert info.value.errno is not None
    assert metrics.http_port is None

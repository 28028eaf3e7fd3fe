"""DaemonMetrics: what a scrape shows, a real HTTP endpoint, and a clear error on a busy port."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest

from vgpud._private.metrics import DaemonMetrics


@pytest.fixture
def metrics() -> Iterator[DaemonMetrics]:
    m = DaemonMetrics()
    yield m
    m.stop_http()


def test_render_has_every_metric(metrics: DaemonMetrics) -> None:
    metrics.set_gpu("node-a", "GPU-1", "h100-80gb", 85520809984, 20 * 2**30, 500)
    metrics.set_leases({"granted": 3, "pending": 1})
    metrics.set_queue_length(7)
    metrics.observe_acquire(0.004, "granted")
    metrics.observe_acquire(12.0, "queued")
    metrics.count_rpc_error("Acquire", "RESOURCE_EXHAUSTED")
    metrics.count_rpc_error("Acquire", "RESOURCE_EXHAUSTED")
    text = metrics.render().decode()
    labels = 'gpu="GPU-1",model="h100-80gb",node="node-a"'
    assert f"vgpu_gpu_memory_capacity_bytes{{{labels}}} 8.5520809984e+10" in text
    assert f"vgpu_gpu_memory_allocated_bytes{{{labels}}} 2.147483648e+10" in text
    assert f"vgpu_gpu_compute_allocated_milli{{{labels}}} 500.0" in text
    assert 'vgpu_leases{state="granted"} 3.0' in text
    assert 'vgpu_leases{state="pending"} 1.0' in text
    assert "vgpu_queue_length 7.0" in text
    assert 'vgpu_acquire_latency_seconds_bucket{le="0.005",outcome="granted"} 1.0' in text
    assert 'vgpu_acquire_latency_seconds_bucket{le="0.001",outcome="granted"} 0.0' in text
    assert 'vgpu_acquire_latency_seconds_bucket{le="60.0",outcome="queued"} 1.0' in text
    assert 'vgpu_rpc_errors_total{code="RESOURCE_EXHAUSTED",method="Acquire"} 2.0' in text
    assert "vgpu_build_info{" in text


def test_preemption_latency_and_project_allocation(metrics: DaemonMetrics) -> None:
    metrics.observe_preemption(0.3, "acknowledged")
    metrics.observe_preemption(31.0, "missed")
    metrics.set_project_allocation({"vision": 2500, "nlp": 0})
    text = metrics.render().decode()
    assert 'vgpu_preemption_seconds_bucket{le="0.5",outcome="acknowledged"} 1.0' in text
    assert 'vgpu_preemption_seconds_bucket{le="0.25",outcome="acknowledged"} 0.0' in text
    assert 'vgpu_preemption_seconds_bucket{le="30.0",outcome="missed"} 0.0' in text
    assert 'vgpu_project_allocated_milli{project="vision"} 2500.0' in text
    assert 'vgpu_project_allocated_milli{project="nlp"} 0.0' in text


def test_forget_gpu_drops_its_series(metrics: DaemonMetrics) -> None:
    metrics.set_gpu("n", "GPU-1", "a30-24gb", 1, 0, 0)
    metrics.forget_gpu("n", "GPU-1", "a30-24gb")
    metrics.forget_gpu("n", "GPU-1", "a30-24gb")  # twice is fine
    assert 'gpu="GPU-1"' not in metrics.render().decode()


def test_registries_are_separate() -> None:
    a, b = DaemonMetrics(), DaemonMetrics()
    a.set_queue_length(5)
    assert "vgpu_queue_length 0.0" in b.render().decode()


def test_http_serves_the_registry(metrics: DaemonMetrics) -> None:
    metrics.set_queue_length(3)
    metrics.start_http("127.0.0.1", 0)
    port = metrics.http_port
    assert port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert "vgpu_queue_length 3.0" in body
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

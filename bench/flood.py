"""The flood check: many waiting acquires from several local users against one daemon, and what it costs others.

    python bench/flood.py [--processes 10] [--per-process 1050] [--per-user-cap 1000] [--seconds 10] [--json]
    (as root: each process drops to its own uid after its imports)

A holder fills the pool, then every process asks for half a GPU's memory with wait=True (none can be granted).
The per-user cap (`[scheduling] max_waiting_per_user`) refuses what each process sends past it, so 10,000
requests wait. While they wait, a root client health-checks the daemon every 10 ms (p50/p99 beside the idle
p99 of the same run, target p99 < 50 ms). Printed: daemon CPU seconds, position messages sent (metric), streams
the server cancelled (must be 0), requests refused by the caps, and the time until the queue is back to 0 once
the processes leave. Last line: one JSON object of it all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_floor import percentile

from tests.support import free_ports
from vgpu.testing import LocalPool, local_pool

FIRST_UID = 61000
CHANNELS = 8
"""Pools (connections) per process: a connection carries at most max_streams_per_connection calls."""


# -- the worker (one per process, as its own uid) -------------------------------------------------------
async def _worker(endpoint: str, count: int) -> dict[str, Any]:
    import vgpu

    outcomes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    queued = asyncio.Event()
    waiting = 0

    def on_queued(_info: object, seen: list[bool]) -> None:
        nonlocal waiting
        if not seen:
            seen.append(True)
            waiting += 1
            if waiting + sum(outcomes.values()) >= count:
                queued.set()

    async def one(pool: vgpu.AsyncPool) -> None:
        seen: list[bool] = []
        try:
            lease = await pool.acquire(memory="40GiB", timeout=3600, on_queued=lambda i: on_queued(i, seen))
        except asyncio.CancelledError:
            outcomes["withdrawn" if seen else "cancelled_by_client_before_queued"] += 1
            raise
        except vgpu.VgpuError as exc:
            outcomes[f"{exc.code}:{exc.reason}"] += 1
            examples.setdefault(f"{exc.code}:{exc.reason}", str(exc)[:300])
            if waiting + sum(outcomes.values()) >= count:
                queued.set()
        else:
            outcomes["granted"] += 1
            await lease.release()

    pools = [vgpu.AsyncPool(endpoint, timeout=60) for _ in range(CHANNELS)]
    for pool in pools:  # connect first: 1,000 first calls at once on a CPU-starved client time out connecting
        await pool.leases()
    tasks = [asyncio.create_task(one(pools[i % CHANNELS])) for i in range(count)]
    await queued.wait()
    print(json.dumps({"ready": True, "waiting": waiting, **outcomes}), flush=True)
    print(json.dumps(examples), file=sys.stderr, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), stop.set)
    await stop.wait()
    unexpected = dict(outcomes)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for pool in pools:
        await pool.close()
    return {"waiting": waiting, "before_stop": unexpected, "after_stop": dict(outcomes)}


def worker_main(uid: int, endpoint: str, count: int) -> None:
    """Drop to `uid` (after the imports, which need the venv under /root) and flood."""
    import vgpu  # noqa: F401 -- load everything before the privilege drop

    if os.getuid() == 0 and uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    result = asyncio.run(_worker(endpoint, count))
    print(json.dumps({"done": True, **result}), flush=True)


# -- the driver ---------------------------------------------------------------------------------------
def health_latencies(endpoint: str, seconds: float, every: float = 0.01) -> tuple[list[float], int]:
    """Health-check round trips (ms) for `seconds`, and how many failed."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    out: list[float] = []
    failed = 0
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]  # stub methods are set at run time
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=2)  # type: ignore[attr-defined]  # as above
            except grpc.RpcError:
                failed += 1
            out.append((time.perf_counter() - started) * 1e3)
            time.sleep(every)
    return out, failed


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port: int, name: str) -> float:
    """Sum of a metric's samples on the daemon's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One flood against a fresh daemon; the figures."""
    state = Path(tempfile.mkdtemp(prefix="vgpu-flood-", dir="/tmp"))
    state.chmod(0o755)
    (port,) = free_ports(1)
    config = state / "vgpud.toml"
    extra_toml = os.environ.get("FLOOD_EXTRA", "")  # more config for experiments, e.g. a [limits] table
    config.write_text(f"[scheduling]\nmax_waiting_per_user = {args.per_user_cap}\n{extra_toml}")
    level = os.environ.get("FLOOD_LOG_LEVEL", "warning")
    extra = ["--config", str(config), "--metrics-port", str(port), "--log-level", level]
    with local_pool("h100-80gb:1", state_dir=state, extra_args=extra) as daemon:
        return _flood(daemon, port, args)


def _flood(daemon: LocalPool, port: int, args: argparse.Namespace) -> dict[str, Any]:
    assert daemon.pid is not None
    idle, _ = health_latencies(daemon.endpoint, 3.0)
    with daemon.pool() as root:
        holder = root.acquire(gpus=1, wait=False)
        cpu0 = cpu_seconds(daemon.pid)
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(FIRST_UID + i), daemon.endpoint, str(args.per_process)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(args.processes)
        ]
        ready = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        queued_s = time.monotonic() - started
        queue_peak = metric(port, "vgpu_queue_length")
        during, failed = health_latencies(daemon.endpoint, args.seconds)
        cpu_flood = cpu_seconds(daemon.pid) - cpu0
        leaving = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        done = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        for proc in procs:
            proc.wait(timeout=60)
        while metric(port, "vgpu_queue_length") > 0 and time.monotonic() - leaving < 60:
            time.sleep(0.1)
        drained_s = time.monotonic() - leaving
        queue_after = metric(port, "vgpu_queue_length")
        holder.release()
    outcomes: Counter[str] = Counter()
    for result in ready:
        outcomes.update({k: v for k, v in result.items() if k not in ("ready", "waiting")})
    cancelled = sum(v for k, v in outcomes.items() if k.startswith("CANCELLED"))
    return {
        "processes": args.processes,
        "sent": args.processes * args.per_process,
        "waiting": sum(r["waiting"] for r in ready),
        "queue_length_peak": queue_peak,
        "seconds_to_queue_all": round(queued_s, 2),
        "refused_by_caps": metric(port, "vgpu_queue_refusals_total"),
        "outcomes_while_waiting": dict(outcomes),
        "cancelled_by_server": cancelled,
        "position_messages": metric(port, "vgpu_queue_position_messages_total"),
        "daemon_cpu_s_flood": round(cpu_flood, 2),
        "health_idle_p99_ms": round(percentile(idle, 0.99), 2),
        "health_p50_ms": round(percentile(during, 0.5), 2),
        "health_p99_ms": round(percentile(during, 0.99), 2),
        "health_failed": failed,
        "queue_after_leave": queue_after,
        "seconds_to_drain": round(drained_s, 2),
        "withdrawn": sum(d["after_stop"].get("withdrawn", 0) for d in done),
        "health_samples": len(during),
        "health_p99_floor_ratio": round(percentile(during, 0.99) / max(statistics.fmean(idle), 1e-6), 1),
    }


def main() -> int:
    """Parse flags, run the flood, print the figures."""
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--per-process", type=int, default=1050)
    parser.add_argument("--per-user-cap", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/flood.py runs as root (each process drops to its own uid)", file=sys.stderr)
        return 2
    figures = run(args)
    if not args.json:
        print(
            f"flood: {figures['processes']} processes sent {figures['sent']} waiting acquires; "
            f"{figures['waiting']} waited (queue peak {figures['queue_length_peak']:.0f}), "
            f"{figures['refused_by_caps']:.0f} refused by the caps, {figures['cancelled_by_server']} cancelled by "
            "the server (must be 0)"
        )
        print(
            f"health check during the flood: p50 {figures['health_p50_ms']} ms, p99 {figures['health_p99_ms']} ms "
            f"(target < 50 ms; idle p99 of this run {figures['health_idle_p99_ms']} ms), "
            f"{figures['health_failed']} failed"
        )
        print(
            f"daemon CPU during queueing and the measured window: {figures['daemon_cpu_s_flood']} s; "
            f"position messages sent: {figures['position_messages']:.0f}"
        )
        print(
            f"after the processes left: queue {figures['queue_after_leave']:.0f} "
            f"(back to 0 in {figures['seconds_to_drain']} s)"
        )
    print(json.dumps(figures))
    ok = figures["cancelled_by_server"] == 0 and figures["queue_after_leave"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

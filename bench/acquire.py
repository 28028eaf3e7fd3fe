"""Acquire latency and throughput of one vgpud, beside the floor measured in the same run.

    python bench/acquire.py [--clients 16] [--seconds 10] [--samples 300] [--json]

Starts a throwaway vgpud (simulated GPUs, embedded etcd), then measures, in this order:
  floor    one empty gRPC round trip (health check on the daemon's socket) plus one etcd transaction
           (compare a mod revision, put a key: the shape of an acquire's claim) against the same etcd;
  latency  one client doing acquire -> release in a loop: p50/p99 of the acquire of an immediately
           grantable shared slice;
  load     N concurrent clients doing acquire -> release for S seconds: cycles/s and p50/p99, and the
           daemon's own CPU time per cycle (what bounds a daemon's rate when it has a core to itself).
  idle     the daemon's RSS and CPU use while idle after the run.
Targets (DESIGN.md): acquire p50 within 3x of the floor; >= 500 acquire+release cycles/s per daemon;
daemon < 150 MB RSS and < 2 % of a core when idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from bench_floor import measure_floor, percentile

import vgpu
from vgpu.testing import LocalPool, local_pool
from vgpud._private.store.embedded_pki import EtcdTlsFiles, client_files


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_usage(pid: int, seconds: float) -> tuple[float, float]:
    """The daemon's CPU use (% of one core) over `seconds` of idling, and its RSS in MB, from /proc."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    used = cpu_seconds(pid) - before
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return used / seconds * 100, rss_kb / 1024


def etcd_endpoint(pool: LocalPool) -> tuple[str, EtcdTlsFiles]:
    """The embedded etcd's client address and the daemon's client files, as recorded under its state dir."""
    data_dir = Path(pool.state_dir) / "etcd"
    ports = json.loads((data_dir / "ports.json").read_text())
    return f"127.0.0.1:{ports['client']}", client_files(data_dir / "pki")


async def cycle_loop(apool: vgpu.AsyncPool, stop_at: float, latencies: list[float]) -> int:
    cycles = 0
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        lease = await apool.acquire(memory="1GiB", compute=0.01, wait=False)
        latencies.append(time.perf_counter() - t0)
        await lease.release()
        cycles += 1
    return cycles


async def measure(pool: LocalPool, clients: int, seconds: float, samples: int) -> dict[str, float]:
    assert pool.pid is not None
    etcd_at, etcd_tls = etcd_endpoint(pool)
    grpc_ms, txn_ms = await measure_floor(pool.endpoint, etcd_at, samples, etcd_tls)
    single: list[float] = []
    async with vgpu.AsyncPool(pool.endpoint) as apool:
        for _ in range(samples):
            t0 = time.perf_counter()
            lease = await apool.acquire(memory="1GiB", compute=0.01, wait=False)
            single.append(time.perf_counter() - t0)
            await lease.release()
    loaded: list[float] = []
    pools = [vgpu.AsyncPool(pool.endpoint) for _ in range(clients)]
    try:
        stop_at = time.perf_counter() + seconds
        started = time.perf_counter()
        cpu_before = cpu_seconds(pool.pid)
        counts = await asyncio.gather(*(cycle_loop(p, stop_at, loaded) for p in pools))
        elapsed = time.perf_counter() - started
        daemon_cpu = cpu_seconds(pool.pid) - cpu_before
    finally:
        for p in pools:
            await p.close()
    floor_ms = grpc_ms + txn_ms
    p50 = percentile(single, 0.5) * 1e3
    return {
        "p50_ms": round(p50, 3),
        "p99_ms": round(percentile(single, 0.99) * 1e3, 3),
        "cycles_per_s": round(sum(counts) / elapsed, 1),
        "daemon_cpu_ms_per_cycle": round(daemon_cpu / sum(counts) * 1e3, 3),
        "daemon_cores_busy": round(daemon_cpu / elapsed, 2),
        "floor_ms": round(floor_ms, 3),
        "floor_grpc_ms": round(grpc_ms, 3),
        "floor_etcd_txn_ms": round(txn_ms, 3),
        "p50_over_floor": round(p50 / floor_ms, 2),
        "loaded_p50_ms": round(percentile(loaded, 0.5) * 1e3, 3),
        "loaded_p99_ms": round(percentile(loaded, 0.99) * 1e3, 3),
        "clients": clients,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--sim", default="h100-80gb:8")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle window for the daemon's CPU use")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with local_pool(sim=args.sim) as pool:
        result = asyncio.run(measure(pool, args.clients, args.seconds, args.samples))
        assert pool.pid is not None
        time.sleep(2.0)  # let the last heartbeats and expiries settle before measuring idle
        idle_cpu, rss_mb = daemon_usage(pool.pid, args.idle_seconds)
        result["idle_cpu_percent"] = round(idle_cpu, 2)
        result["rss_mb"] = round(rss_mb, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"floor (same run): {result['floor_ms']:.3f} ms = gRPC round trip {result['floor_grpc_ms']:.3f} ms"
        f" + etcd txn {result['floor_etcd_txn_ms']:.3f} ms"
    )
    print(
        f"acquire, 1 client: p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms"
        f" -> p50 is {result['p50_over_floor']:.2f}x the floor (target <= 3x)"
    )
    print(
        f"acquire+release, {args.clients} clients for {args.seconds:.0f}s: {result['cycles_per_s']:.0f} cycles/s"
        f" (target >= 500), acquire p50 {result['loaded_p50_ms']:.3f} ms, p99 {result['loaded_p99_ms']:.3f} ms"
    )
    print(
        f"daemon CPU under that load: {result['daemon_cpu_ms_per_cycle']:.2f} ms per cycle,"
        f" {result['daemon_cores_busy']:.2f} cores busy (on {os.cpu_count()} cores shared with etcd and the clients)"
    )
    print(
        f"daemon after the run: {result['rss_mb']:.0f} MB RSS (target < 150), idle CPU"
        f" {result['idle_cpu_percent']:.2f}% of a core over {args.idle_seconds:.0f}s (target < 2%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

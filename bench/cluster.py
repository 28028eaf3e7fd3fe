"""Acquire latency and throughput with K = 1, 2, 4 vgpud daemons on this host sharing one etcd.

    python bench/cluster.py [--ks 1,2,4] [--clients 16] [--seconds 10] [--samples 300] [--json]

Starts one etcd, then for each K in turn starts K daemons (simulated GPUs, a fresh --cluster name per K, each
with its own node name, state dir and socket) against it, measures, stops them and deletes that cluster's keys
(vgpud refuses to start on an etcd that holds another cluster's data):
  floor    once, on the first K's first daemon: one empty gRPC round trip (health check on the daemon's
           socket) plus one etcd transaction (compare a mod revision, put a key: the shape of an acquire's
           claim) against the shared etcd;
  latency  one client per daemon in turn doing acquire -> release (samples split evenly over the daemons):
           p50/p99 of the acquire of an immediately grantable shared slice, and p50 over the floor;
  load     C client processes, spread round-robin over the K daemons (each talks only to its own node's
           daemon), doing acquire -> release for S seconds: total and per-daemon cycles/s, acquire p50/p99,
           and total cycles/s relative to K=1 (or to the smallest K run).
Every daemon, etcd and client runs on this one host, so adding daemons here adds contention for the same
cores; it does not model a fleet of machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from bench_floor import measure_floor, percentile

import vgpu
from vgpu.testing import LocalPool
from vgpud._private.registry import Keys
from vgpud._private.store.base import Delete
from vgpud._private.store.embedded_etcd import EmbeddedEtcd, EmbeddedEtcdError
from vgpud._private.store.etcd_store import EtcdStore

MEMORY = "1GiB"
COMPUTE = 0.01
WARMUP_CYCLES = 5
CLIENT_START_TIMEOUT = 180.0
"""Seconds for every client process to import, connect and warm up; 16 spawns on 2 cores take a while."""


class BenchError(Exception):
    """A one-line reason the run cannot go on, and optional detail (a log tail) printed under it."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class ClientResult:
    daemon: int
    cycles: int
    started: float
    ended: float
    latencies: list[float]


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks wants comma-separated daemon counts like 1,2,4, not {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"--ks wants daemon counts >= 1, not {text!r}")
    return ks


# -- daemons ---------------------------------------------------------------------------------------------
def start_daemons(stack: contextlib.ExitStack, k: int, sim: str, etcd: EmbeddedEtcd, cluster: str) -> list[LocalPool]:
    """K daemons on `cluster` in the shared etcd, each stopped (and its state dir removed) when `stack` closes."""
    pools = []
    for i in range(k):
        etcd_args = ["--etcd", etcd.endpoint, *etcd.client_tls.vgpud_flags()]
        pool = LocalPool(sim, extra_args=[*etcd_args, "--cluster", cluster])
        stack.callback(pool.cleanup)
        try:
            pool.start()
        except vgpu.VgpuError as exc:
            reason = str(exc).split("; log tail", 1)[0]
            reason = re.sub(r" \([^()]*\)$", "", reason.splitlines()[0])  # drop the argv the harness appends
            raise BenchError(
                f"vgpud {i + 1} of {k} (node {pool.node_name}, K={k}) failed to start: {reason}",
                f"log tail of {pool.log_path}:\n{pool.log_tail()}",
            ) from None
        pools.append(pool)
    return pools


async def delete_cluster(etcd: EmbeddedEtcd, cluster: str) -> None:
    """Remove every key of `cluster` from etcd, once its daemons have stopped."""
    store = await EtcdStore.connect([etcd.endpoint], **etcd.client_tls.store_args())
    try:
        await store.txn([], [Delete(Keys(cluster).root, prefix=True)], timeout=10)
    finally:
        await store.close()


# -- single-client latency -------------------------------------------------------------------------------
async def single_client(pools: list[LocalPool], samples: int) -> list[float]:
    """Acquire latencies of one client per daemon in turn, `samples` split evenly over the daemons."""
    per_daemon = max(1, samples // len(pools))
    latencies: list[float] = []
    for pool in pools:
        async with vgpu.AsyncPool(pool.endpoint) as apool:
            for i in range(WARMUP_CYCLES + per_daemon):
                t0 = time.perf_counter()
                lease = await apool.acquire(memory=MEMORY, compute=COMPUTE, wait=False)
                if i >= WARMUP_CYCLES:
                    latencies.append(time.perf_counter() - t0)
                await lease.release()
    return latencies


# -- load: client processes ------------------------------------------------------------------------------
async def client_cycles(endpoint: str, seconds: float, barrier: Barrier) -> tuple[int, float, float, list[float]]:
    async with vgpu.AsyncPool(endpoint) as apool:
        for _ in range(WARMUP_CYCLES):
            lease = await apool.acquire(memory=MEMORY, compute=COMPUTE, wait=False)
            await lease.release()
        await asyncio.to_thread(barrier.wait, CLIENT_START_TIMEOUT)
        latencies = []
        cycles = 0
        # perf_counter is CLOCK_MONOTONIC on Linux, one clock for all processes, so the parent can compare stamps.
        started = time.perf_counter()
        stop_at = started + seconds
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            lease = await apool.acquire(memory=MEMORY, compute=COMPUTE, wait=False)
            latencies.append(time.perf_counter() - t0)
            await lease.release()
            cycles += 1
        return cycles, started, time.perf_counter(), latencies


def client_process(daemon: int, endpoint: str, seconds: float, barrier: Barrier, results: Queue[Any]) -> None:
    """One client process: warm up, wait for all the others, run acquire -> release cycles, report."""
    try:
        cycles, started, ended, latencies = asyncio.run(client_cycles(endpoint, seconds, barrier))
    except Exception as exc:  # noqa: BLE001 -- any failure must reach the parent as a message, not a silent exit
        barrier.abort()
        results.put(f"client on daemon {daemon} ({endpoint}) failed: {type(exc).__name__}: {exc}")
        return
    results.put(ClientResult(daemon, cycles, started, ended, latencies))


def run_clients(ctx: SpawnContext, pools: list[LocalPool], clients: int, seconds: float) -> list[ClientResult]:
    """`clients` processes, client i on daemon i % K, started together once all are connected."""
    barrier = ctx.Barrier(clients + 1)
    results: Queue[Any] = ctx.Queue()
    procs: list[BaseProcess] = [
        ctx.Process(
            target=client_process,
            args=(i % len(pools), pools[i % len(pools)].endpoint, seconds, barrier, results),
            daemon=True,
        )
        for i in range(clients)
    ]
    for proc in procs:
        proc.start()
    collected: list[ClientResult] = []
    try:
        with contextlib.suppress(threading.BrokenBarrierError):  # a client failed first; its message is queued
            barrier.wait(CLIENT_START_TIMEOUT)
        while len(collected) < clients:
            try:
                item = results.get(timeout=seconds + CLIENT_START_TIMEOUT)
            except queue.Empty:
                dead = sum(1 for proc in procs if proc.exitcode not in (None, 0))
                raise BenchError(
                    f"{clients - len(collected)} of {clients} client processes sent no result ({dead} died)"
                ) from None
            if isinstance(item, str):
                raise BenchError(item)
            collected.append(item)
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return collected


# -- one K -----------------------------------------------------------------------------------------------
def measure_k(
    ctx: SpawnContext, args: argparse.Namespace, k: int, etcd: EmbeddedEtcd, floor: tuple[float, float] | None
) -> tuple[dict[str, Any], tuple[float, float]]:
    """Start K daemons, measure (the floor too, if not yet measured), stop them."""
    cluster = f"bench-{uuid.uuid4().hex[:8]}-k{k}"
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: asyncio.run(delete_cluster(etcd, cluster)))  # runs after the daemons stop
        print(f"K={k}: starting {k} vgpud on cluster {cluster}", file=sys.stderr)
        pools = start_daemons(stack, k, args.sim, etcd, cluster)
        if floor is None:
            print(f"K={k}: measuring the floor", file=sys.stderr)
            floor = asyncio.run(measure_floor(pools[0].endpoint, etcd.endpoint, args.samples, etcd.client_tls))
        print(f"K={k}: single-client latency", file=sys.stderr)
        single = asyncio.run(single_client(pools, args.samples))
        print(f"K={k}: {args.clients} client processes for {args.seconds:g}s", file=sys.stderr)
        loaded = run_clients(ctx, pools, args.clients, args.seconds)
    elapsed = max(r.ended for r in loaded) - min(r.started for r in loaded)
    per_daemon = [sum(r.cycles for r in loaded if r.daemon == d) / elapsed for d in range(k)]
    latencies = [x for r in loaded for x in r.latencies]
    if not latencies:
        raise BenchError(f"K={k}: no acquire completed in {args.seconds:g}s")
    floor_ms = sum(floor)
    p50 = percentile(single, 0.5) * 1e3
    result = {
        "k": k,
        "cluster": cluster,
        "p50_ms": round(p50, 3),
        "p99_ms": round(percentile(single, 0.99) * 1e3, 3),
        "p50_over_floor": round(p50 / floor_ms, 2),
        "single_samples": len(single),
        "clients_per_daemon": [sum(1 for i in range(args.clients) if i % k == d) for d in range(k)],
        "cycles_per_s": round(sum(per_daemon), 1),
        "per_daemon_cycles_per_s": [round(x, 1) for x in per_daemon],
        "loaded_p50_ms": round(percentile(latencies, 0.5) * 1e3, 3),
        "loaded_p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
    }
    return result, floor


def measure(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # the parent already holds gRPC channels, which do not survive a fork
    with tempfile.TemporaryDirectory(prefix="vgpu-bench-", dir="/tmp") as tmp:
        etcd = EmbeddedEtcd(Path(tmp) / "etcd")
        try:
            etcd.start()
        except EmbeddedEtcdError as exc:
            first, _, rest = str(exc).partition("\n")
            raise BenchError(f"etcd did not start: {first}", rest) from None
        try:
            floor: tuple[float, float] | None = None
            runs = []
            for k in args.ks:
                run, floor = measure_k(ctx, args, k, etcd, floor)
                runs.append(run)
        finally:
            etcd.stop()
    assert floor is not None
    base = next((r for r in runs if r["k"] == 1), min(runs, key=lambda r: int(r["k"])))
    for run in runs:
        run["vs_base"] = round(run["cycles_per_s"] / base["cycles_per_s"], 2)
    return {
        "cpu_count": os.cpu_count(),
        "floor_ms": round(sum(floor), 3),
        "floor_grpc_ms": round(floor[0], 3),
        "floor_etcd_txn_ms": round(floor[1], 3),
        "base_k": base["k"],
        "clients": args.clients,
        "seconds": args.seconds,
        "samples": args.samples,
        "sim": args.sim,
        "runs": runs,
    }


# -- report ----------------------------------------------------------------------------------------------
def print_report(report: dict[str, Any]) -> None:
    runs: list[dict[str, Any]] = report["runs"]
    print(
        f"floor (same run): {report['floor_ms']:.3f} ms = gRPC round trip {report['floor_grpc_ms']:.3f} ms"
        f" + etcd txn {report['floor_etcd_txn_ms']:.3f} ms"
    )
    print(
        f"host: {report['cpu_count']} CPUs (os.cpu_count()) shared by every daemon, the one etcd and all clients:"
        " scale-out here measures contention, not a fleet"
    )
    rows: list[tuple[str, list[str]]] = [
        ("daemons sharing one etcd", [str(r["k"]) for r in runs]),
        ("1 client: acquire p50 ms", [f"{r['p50_ms']:.3f}" for r in runs]),
        ("1 client: acquire p99 ms", [f"{r['p99_ms']:.3f}" for r in runs]),
        ("1 client: p50 / floor", [f"{r['p50_over_floor']:.2f}x" for r in runs]),
        ("load: clients per daemon", ["/".join(map(str, r["clients_per_daemon"])) for r in runs]),
        ("load: cycles/s total", [f"{r['cycles_per_s']:.0f}" for r in runs]),
        ("load: cycles/s per daemon", ["/".join(f"{x:.0f}" for x in r["per_daemon_cycles_per_s"]) for r in runs]),
        ("load: acquire p50 ms", [f"{r['loaded_p50_ms']:.3f}" for r in runs]),
        ("load: acquire p99 ms", [f"{r['loaded_p99_ms']:.3f}" for r in runs]),
        (f"load: total vs K={report['base_k']}", [f"{r['vs_base']:.2f}x" for r in runs]),
    ]
    label_width = max(len(label) for label, _ in rows)
    width = max(12, *(len(cell) for _, cells in rows for cell in cells))
    print(
        f"{report['clients']} client processes for {report['seconds']:g}s per K; 1-client latency over"
        f" {report['samples']} acquires per K; simulated GPUs per daemon: {report['sim']}"
    )
    print(" " * label_width + "".join(f"{'K=' + str(r['k']):>{width + 2}}" for r in runs))
    for label, cells in rows:
        print(f"{label:<{label_width}}" + "".join(f"{cell:>{width + 2}}" for cell in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=parse_ks, default=[1, 2, 4], help="daemon counts to run, e.g. 1,2,4")
    parser.add_argument("--clients", type=int, default=16, help="client processes under load, for every K")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each K's load phase")
    parser.add_argument("--samples", type=int, default=300, help="floor samples; 1-client acquires per K")
    parser.add_argument("--sim", default="h100-80gb:4", help="simulated GPUs of each daemon")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.samples < 1:
        parser.error("--clients and --samples must be >= 1 and --seconds > 0")
    try:
        report = measure(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        return 1
    except vgpu.VgpuError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

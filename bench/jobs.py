"""`make bench-jobs`: how long vgpu's multi-node launch takes beside starting the same command by hand.

Three vgpud nodes on loopback (mutual TLS between them), one gang lease across them. Measured, N times:
- job: `launch()` of `python -c pass` on every node (RunJob -> rank 0 starts and picks the port -> the
  others start -> every rank exits -> the job's status), what `vgpu run` adds before and after CMD;
- floor: the same command started and waited for here with subprocess, three at once (one per node).
Prints p50/p95 of both and their ratio; the overhead is the spawn helper (one more Python start per rank),
two gRPC hops and the start of rank 0 before the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from bench_floor import percentile  # noqa: E402
from two_nodes import node_pool  # noqa: E402

import vgpu  # noqa: E402 -- after the path for the example pool helper
from vgpu._private.job_launch import LaunchOptions, launch  # noqa: E402
from vgpu._private.pool import client_of  # noqa: E402

SAMPLES = int(os.environ.get("JOBS_SAMPLES", "20"))
COMMAND = [sys.executable, "-c", "pass"]


def floor_once() -> float:
    started = time.perf_counter()
    procs = [subprocess.Popen(COMMAND) for _ in range(3)]
    for proc in procs:
        proc.wait()
    return (time.perf_counter() - started) * 1e3


def main() -> int:
    with node_pool(3) as daemons, vgpu.Pool(daemons[0].endpoint) as pool:
        lease = pool.acquire(gpus=3, gang=True, node=None, wait=False, description="bench-jobs")
        print(f"lease {lease.id} on {', '.join(lease.nodes)}", flush=True)
        options = LaunchOptions(command=COMMAND, quiet=True)
        jobs, floors = [], []
        with Path(os.devnull).open("w") as quiet:
            launch(client_of(pool), lease, options, quiet)  # warm the channels and the page cache
            for _ in range(SAMPLES):
                floors.append(floor_once())
                started = time.perf_counter()
                result = launch(client_of(pool), lease, options, quiet)
                jobs.append((time.perf_counter() - started) * 1e3)
                if result.status != 0:
                    print(f"a job failed with status {result.status}", file=sys.stderr)
                    return 1
        lease.release()
    job50, job95 = percentile(jobs, 0.5), percentile(jobs, 0.95)
    floor50, floor95 = percentile(floors, 0.5), percentile(floors, 0.95)
    print(f"job on 3 nodes, start to status: p50 {job50:.1f} ms, p95 {job95:.1f} ms ({SAMPLES} runs)")
    print(f"floor (3 local starts of the same command): p50 {floor50:.1f} ms, p95 {floor95:.1f} ms")
    print(f"ratio p50: {job50 / floor50:.2f}x the floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

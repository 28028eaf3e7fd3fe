"""Preemption protocol latency against a real vgpud: decision -> slices freed -> resumed, with a floor.

    python bench/preempt.py [--rounds 20]

A throwaway daemon (one simulated H100, embedded etcd) and an SDK client whose on_preempt returns at once
(no state to save: what is measured is the protocol, not a checkpoint). Each round an admin preempts the
lease; the lease's own timestamped steps (written by the daemon, one clock) give decision -> suspended
(slices freed) and decision -> resumed. The floor is one GetLease round trip measured in the same run.
Printed: one JSON line with p50/p95 of each, and their ratio to the floor. The CuPy state offload (the
DESIGN.md target "state-size / host-copy bandwidth + 50 ms") arrives with the in-process runtime.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import grpc
from google.protobuf import duration_pb2

from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, workload_pb2, workload_pb2_grpc
from vgpu.testing import local_pool


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    freed: list[float] = []
    resumed_in: list[float] = []
    floor: list[float] = []
    with local_pool("h100-80gb:1") as pool, pool.pool() as client:
        channel = grpc.insecure_channel(pool.endpoint)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        workload = workload_pb2_grpc.WorkloadServiceStub(channel)
        resumed = threading.Event()
        lease = client.acquire(gpus=1, wait=False, on_preempt=lambda *_: None, on_resume=lambda _l: resumed.set())
        get = workload_pb2.GetLeaseRequest(lease_id=lease.id, token=lease.token)
        grace = duration_pb2.Duration(seconds=30)
        for _ in range(args.rounds):
            started = time.perf_counter()
            workload.GetLease(get, timeout=10)
            floor.append(time.perf_counter() - started)
            resumed.clear()
            admin.PreemptLease(admin_pb2.PreemptLeaseRequest(lease_id=lease.id, reason="b", grace=grace), timeout=10)
            if not resumed.wait(30):
                raise SystemExit("bench/preempt.py: the lease did not resume within 30 s")
            steps = workload.GetLease(get, timeout=10).lease.steps
            at = {s.step: s.time.ToNanoseconds() / 1e9 for s in steps}  # the last of each step
            freed.append(at["suspended"] - at["preempt"])
            resumed_in.append(at["resumed"] - at["preempt"])
        lease.release()
        channel.close()
    base = statistics.median(floor)
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "floor_p50_ms": round(base * 1000, 2),
                "decision_to_freed_p50_ms": round(_p(freed, 0.5) * 1000, 1),
                "decision_to_freed_p95_ms": round(_p(freed, 0.95) * 1000, 1),
                "decision_to_resumed_p50_ms": round(_p(resumed_in, 0.5) * 1000, 1),
                "decision_to_resumed_p95_ms": round(_p(resumed_in, 0.95) * 1000, 1),
                "freed_p50_over_floor": round(_p(freed, 0.5) / base, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Preemption protocol latency against a real vgpud: decision -> slices freed -> resumed, with a floor.

    python bench/preempt.py [--rounds 20]

A throwaway daemon (one simulated H100, embedded etcd) and an SDK client whose on_preempt returns at once
(no state to save: what is measured is the protocol, not a checkpoint). Each round an admin preempts the
lease; the lease's own timestamped steps (written by the daemon, one clock) give decision -> suspended
(slices freed) and decision -> resumed. The floor is one GetLease round trip measured in the same run.
Printed: one JSON line with p50/p95 of each, and their ratio to the floor.

Then, per state size (--state-mib), a lease whose workload registered that much state with its runtime
(CuPy on a GPU, NumPy here) and calls checkpoint() in a loop: decision -> slices freed now includes copying
the state to host memory and freeing it. Beside it, the plain device-to-host copy of the same bytes into the
same kind of buffer, timed in the same run: the DESIGN.md target is freed <= that copy + 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import grpc
import numpy as np
from google.protobuf import duration_pb2

import vgpu
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, workload_pb2, workload_pb2_grpc
from vgpu.testing import local_pool


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--state-mib", default="16,64,256", help="state sizes to checkpoint, in MiB")
    parser.add_argument("--state-rounds", type=int, default=5, help="preemptions per state size (p50 reported)")
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
        for mib in (int(x) for x in args.state_mib.split(",") if x):
            print(json.dumps(_state_round(client, admin, mib, args.state_rounds)), flush=True)
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


def _state_round(client: vgpu.Pool, admin: admin_pb2_grpc.AdminServiceStub, mib: int, rounds: int) -> dict[str, object]:
    """Preemptions of a lease holding `mib` MiB of registered state, and plain copies of those bytes."""
    nbytes = mib * 1024 * 1024
    with client.acquire(gpus=1, wait=False) as lease:
        rt = lease.runtime
        state = rt.xp.ones(nbytes // 4, dtype=np.float32)
        lease.register("state", state)
        copies = []
        for _ in range(
            rounds
        ):  # the plain device-to-host copy of the same bytes into a fresh buffer, as a checkpoint does
            started = time.perf_counter()
            host = rt.to_host(state)
            copies.append(time.perf_counter() - started)
            del host
        del state
        stop = threading.Event()
        resumed = threading.Semaphore(0)

        def loop() -> None:
            while not stop.is_set():
                if lease.checkpoint():
                    resumed.release()
                time.sleep(0.0005)

        worker = threading.Thread(target=loop, name="bench-loop")
        worker.start()
        freed: list[float] = []
        try:
            grace = duration_pb2.Duration(seconds=60)
            request = admin_pb2.PreemptLeaseRequest(lease_id=lease.id, reason="bench", grace=grace)
            for _ in range(rounds):
                admin.PreemptLease(request, timeout=10)
                if not resumed.acquire(timeout=120):
                    raise SystemExit("bench/preempt.py: the stateful lease did not resume within 120 s")
                at = {step: when.timestamp() for step, when in lease.steps}  # the last of each step
                freed.append(at["suspended"] - at["preempt"])
        finally:
            stop.set()
            worker.join()
        same = bool((lease.state["state"] == 1).all())
    copy_s, freed_s = statistics.median(copies), statistics.median(freed)
    return {
        "state_mib": mib,
        "backend": rt.backend,
        "rounds": rounds,
        "host_copy_p50_ms": round(copy_s * 1000, 1),
        "decision_to_freed_p50_ms": round(freed_s * 1000, 1),
        "decision_to_freed_max_ms": round(max(freed) * 1000, 1),
        "freed_minus_copy_p50_ms": round((freed_s - copy_s) * 1000, 1),
        "target_met": freed_s <= copy_s + 0.050,
        "restored_exact": same,
    }


if __name__ == "__main__":
    raise SystemExit(main())

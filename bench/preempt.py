"""Preemption protocol latency against a real vgpud: decision -> slices freed -> resumed, with a floor.

    python bench/preempt.py [--rounds 20] [--state-mib 16,64,256] [--state-rounds 5]
                            [--backend auto|cupy|numpy] [--json-out FILE]

A throwaway daemon (embedded etcd; one simulated H100, or with CuPy this host's real GPUs through NVML, so that
the lease's runtime lands on the GPU) and an SDK client whose on_preempt returns at once
(no state to save: what is measured is the protocol, not a checkpoint). Each round an admin preempts the
lease; the lease's own timestamped steps (written by the daemon, one clock) give decision -> suspended
(slices freed) and decision -> resumed. The floor is one GetLease round trip measured in the same run.
Printed: one JSON line with p50/p95 of each, and their ratio to the floor. --rounds 0 skips these rounds.

Then, per state size (--state-mib), a lease whose workload registered that much state with its runtime
(--backend: CuPy, device-resident state on the GPU; NumPy, a simulated device; auto: CuPy where it sees a GPU)
and calls checkpoint() in a loop: decision -> slices freed now includes copying the state to host memory and
freeing it. Beside it, the plain device-to-host copy of the same bytes into the same kind of buffer (a fresh
pinned one on CuPy, as a checkpoint takes), timed in the same run: the DESIGN.md target is freed <= that copy +
50 ms. The pageable copy (`runtime.to_host`) is shown too. --json-out writes every figure as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from google.protobuf import duration_pb2

import vgpu
from vgpu._private.channels import authenticated_channel
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, workload_pb2, workload_pb2_grpc
from vgpu.testing import LocalPool


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _pick_backend(kind: str) -> str:
    """The backend, "cupy" or "numpy", as bench/enforce.py picks: auto takes CuPy when it imports and sees a GPU."""
    if kind == "numpy":
        return "numpy"
    try:
        import cupy  # imported only on the GPU path: NumPy runs never need CuPy

        count = int(cupy.cuda.runtime.getDeviceCount())
    except (ImportError, RuntimeError):  # no CuPy, no driver or no device: CuPy's CUDARuntimeError is a RuntimeError
        count = 0
    if count > 0:
        return "cupy"
    if kind == "cupy":
        raise SystemExit("bench/preempt.py: --backend cupy needs CuPy and a visible GPU")
    return "numpy"


def _daemon(backend: str) -> LocalPool:
    """One simulated H100 for NumPy; for CuPy this host's real GPUs (NVML), so the lease's GPU is one CuPy sees."""
    daemon = LocalPool("h100-80gb:1")
    if backend == "cupy":
        at = daemon.argv.index("--sim")
        daemon.argv[at : at + 2] = ["--backend", "nvml"]
    return daemon


def stop_on_sigterm() -> None:
    """A SIGTERM (timeout, gpu-check's budget) unwinds like Ctrl-C, so the daemon and its etcd are stopped."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="protocol rounds (0: none)")
    parser.add_argument("--state-mib", default="16,64,256", help="state sizes to checkpoint, in MiB")
    parser.add_argument("--state-rounds", type=int, default=5, help="preemptions per state size (p50 reported)")
    parser.add_argument("--backend", choices=("auto", "cupy", "numpy"), default="auto", help="the lease runtime's")
    parser.add_argument("--json-out", type=Path, help="write every figure here as one JSON object")
    args = parser.parse_args()
    if args.rounds < 0 or args.state_rounds < 1:
        parser.error("--rounds must be >= 0 and --state-rounds >= 1")
    sizes = [int(x) for x in args.state_mib.split(",") if x.strip()]
    stop_on_sigterm()
    backend = _pick_backend(args.backend)
    result: dict[str, Any] = {"backend": backend, "protocol": None, "state": []}
    with _daemon(backend) as pool, pool.pool() as client:
        channel = authenticated_channel(pool.endpoint)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        if args.rounds:
            result["protocol"] = _protocol_rounds(client, admin, workload_pb2_grpc.WorkloadServiceStub(channel), args)
        for mib in sizes:
            row = _state_round(client, admin, mib, args.state_rounds, backend)
            result["state"].append(row)
            print(json.dumps(row), flush=True)
        channel.close()
    if result["protocol"] is not None:
        print(json.dumps(result["protocol"]))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _protocol_rounds(
    client: vgpu.Pool,
    admin: admin_pb2_grpc.AdminServiceStub,
    workload: workload_pb2_grpc.WorkloadServiceStub,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Preempt a lease with no state, round after round: decision -> freed -> resumed beside the floor."""
    freed: list[float] = []
    resumed_in: list[float] = []
    floor: list[float] = []
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
    base = statistics.median(floor)
    return {
        "rounds": args.rounds,
        "floor_p50_ms": round(base * 1000, 2),
        "decision_to_freed_p50_ms": round(_p(freed, 0.5) * 1000, 1),
        "decision_to_freed_p95_ms": round(_p(freed, 0.95) * 1000, 1),
        "decision_to_resumed_p50_ms": round(_p(resumed_in, 0.5) * 1000, 1),
        "decision_to_resumed_p95_ms": round(_p(resumed_in, 0.95) * 1000, 1),
        "freed_p50_over_floor": round(_p(freed, 0.5) / base, 1),
    }


def _state_round(
    client: vgpu.Pool, admin: admin_pb2_grpc.AdminServiceStub, mib: int, rounds: int, backend: str
) -> dict[str, object]:
    """Preemptions of a lease holding `mib` MiB of registered state, and plain copies of those bytes."""
    nbytes = mib * 1024 * 1024
    options = vgpu.RuntimeOptions(backend=backend)
    with client.acquire(gpus=1, wait=False, runtime=options) as lease:
        rt = lease.runtime
        if rt.backend != backend:
            raise SystemExit(f"bench/preempt.py: the lease's runtime runs on {rt.backend}, not {backend}")
        state = rt.xp.ones(nbytes // 4, dtype=np.float32)
        lease.register("state", state)
        device = rt._backend  # the checkpoint's own copy path: its host buffers and its device
        copies, pageable = [], []
        for _ in range(rounds):  # the device-to-host copy of the same bytes into a fresh buffer, as a checkpoint does
            device.synchronize()
            started = time.perf_counter()
            host = device.to_host(state, out=device.empty_host(tuple(state.shape), np.dtype(state.dtype)))
            device.synchronize()
            copies.append(time.perf_counter() - started)
            del host
            started = time.perf_counter()
            host = rt.to_host(state)
            pageable.append(time.perf_counter() - started)
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
        restored = lease.state["state"]
        same = bool((restored == 1).all()) and int(restored.nbytes) == nbytes and rt.backend == backend
        where = _device_name(rt) if backend == "cupy" else "simulated (NumPy)"
    copy_s, freed_s = statistics.median(copies), statistics.median(freed)
    return {
        "state_mib": mib,
        "backend": rt.backend,
        "device": where,
        "rounds": rounds,
        "host_copy_p50_ms": round(copy_s * 1000, 1),
        "host_copy_gib_per_s": round(nbytes / copy_s / 1024**3, 2),
        "pageable_copy_p50_ms": round(statistics.median(pageable) * 1000, 1),
        "decision_to_freed_p50_ms": round(freed_s * 1000, 1),
        "decision_to_freed_max_ms": round(max(freed) * 1000, 1),
        "freed_minus_copy_p50_ms": round((freed_s - copy_s) * 1000, 1),
        "target_met": freed_s <= copy_s + 0.050,
        "restored_exact": same,
    }


def _device_name(rt: vgpu.Runtime) -> str:
    """The name CUDA gives the lease's GPU."""
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(getattr(rt._backend, "device_index", 0))["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


if __name__ == "__main__":
    raise SystemExit(main())

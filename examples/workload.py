"""An example workload: take a GPU slice, work inside its budget, give it back.

    python examples/workload.py --name train-a --memory 40GiB --compute 0.5 --seconds 3
    python examples/workload.py --name infer --mig 1g.10gb --seconds 3      # a MIG instance

Without a GPU the "work" is NumPy on the CPU; on a GPU host the same lease environment
(CUDA_VISIBLE_DEVICES, CUPY_GPU_MEMORY_LIMIT) is what a CuPy or PyTorch job would run with.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

import vgpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--memory")
    parser.add_argument("--compute")
    parser.add_argument("--mig", help="a MIG profile such as 3g.40gb instead of memory/compute")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()

    def queued(info: vgpu.QueueInfo) -> None:
        print(f"[{args.name}] waiting: position {info.position} of {info.queue_length} ({info.reason})", flush=True)

    started = time.monotonic()
    shape = {"mig": args.mig} if args.mig else {"memory": args.memory, "compute": args.compute}
    with vgpu.acquire(**shape, description=args.name, on_queued=queued) as lease:
        waited = time.monotonic() - started
        where = ", ".join(f"GPU {s.gpu_index} ({s.gpu_uuid[:12]}…)" for s in lease.slices)
        print(f"[{args.name}] granted {lease.id} after {waited:.2f}s on {where}", flush=True)
        print(f"[{args.name}]   CUDA_VISIBLE_DEVICES={lease.env['CUDA_VISIBLE_DEVICES']}", flush=True)
        # A child started with the lease's environment picks the lease up again with vgpu.attach().
        child = subprocess.run(
            [sys.executable, "-c", "import vgpu; print(vgpu.attach().id)"],
            env={**os.environ, **lease.env},
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"[{args.name}]   a child process attached to {child.stdout.strip()}", flush=True)
        rng = np.random.default_rng(0)
        a = rng.standard_normal((256, 256))
        steps = 0
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            a = np.tanh(a @ a.T / 256)
            steps += 1
        print(f"[{args.name}] did {steps} steps; releasing", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

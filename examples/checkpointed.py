"""An example preemptible training job: checkpoints at iteration boundaries, yields when asked, resumes.

    python examples/checkpointed.py --name nlp-train --project nlp --priority best-effort --steps 40

Each step does a little array work on the lease's runtime (CuPy on a GPU, NumPy here); `lease.checkpoint()`
after every step returns at once unless the pool asked for the GPU back, in which case the registered
weights are copied to host memory, the GPU given back, and the job waits in the queue until it is re-granted
(maybe another GPU: the new CUDA_VISIBLE_DEVICES is printed), then the weights are restored bit-exact.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import vgpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--project", default="")
    parser.add_argument("--priority", default="")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    args = parser.parse_args()
    state: dict[str, object] = {}

    def save(_lease: vgpu.Lease, notice: vgpu.PreemptNotice) -> None:
        state["saved"] = {"step": state["step"]}  # a real job would write its model and optimizer state
        print(f"[{args.name}] PREEMPT ({notice.reason}): checkpointed at step {state['step']}, yielding", flush=True)

    def restore(lease: vgpu.Lease) -> None:
        print(f"[{args.name}] RESUMED on CUDA_VISIBLE_DEVICES={lease.env['CUDA_VISIBLE_DEVICES']}", flush=True)

    started = time.monotonic()
    with vgpu.acquire(
        gpus=args.gpus,
        project=args.project,
        priority=args.priority,
        description=args.name,
        on_preempt=save,
        on_resume=restore,
        on_queued=lambda info: print(f"[{args.name}] waiting: {info.reason}", flush=True),
    ) as lease:
        waited = time.monotonic() - started
        print(f"[{args.name}] granted {lease.id} after {waited:.2f}s", flush=True)
        print(f"[{args.name}]   CUDA_VISIBLE_DEVICES={lease.env['CUDA_VISIBLE_DEVICES']}", flush=True)
        xp = lease.runtime.xp
        lease.register("weights", xp.array(np.random.default_rng(0).standard_normal((128, 128))))
        for step in range(args.steps):
            state["step"] = step
            weights = lease.state["weights"]
            deadline = time.monotonic() + args.step_seconds
            while time.monotonic() < deadline:
                weights[...] = xp.tanh(weights @ weights.T / 128)
            checksum = float(weights.sum())
            del weights  # only lease.state holds the weights across checkpoint(): their memory can be freed
            if lease.checkpoint():
                same = float(lease.state["weights"].sum()) == checksum
                print(f"[{args.name}] weights restored on {lease.runtime.backend}, bit-exact: {same}", flush=True)
        steps = [name for name, _ in lease.steps]
        print(f"[{args.name}] done: {args.steps} steps, preempted {lease.preemptions}x, steps {steps}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

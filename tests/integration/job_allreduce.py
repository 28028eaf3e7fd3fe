"""A job rank for tests/integration/test_jobs.py: meets the others at MASTER_ADDR:MASTER_PORT over TCP.

Modes: per-node / per-gpu (all-reduce the ranks, print the rendezvous variables and the sum as JSON),
fail-on-rank-1 DIR (rank 1 exits 3 at once, the others wait to be stopped), fail-on-rank-1-quickly (rank 1
exits 3, the others finish), wait DIR (write the pid, then wait; write the signal received and exit).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from rendezvous import all_reduce  # the demo's rank (examples/), tested here too

KEYS = (
    "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "LOCAL_WORLD_SIZE", "PET_NNODES", "PET_NODE_RANK",
    "PET_NPROC_PER_NODE", "PET_MASTER_ADDR", "PET_MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
    "CUDA_VISIBLE_DEVICES", "VGPU_LEASE_ID",
)  # fmt: skip


def requeue(directory: Path, rank: int) -> int:
    """Save a checkpoint on SIGTERM and exit; once restarted, report what was saved and the restart count."""
    restarts = os.environ["VGPU_RESTART_COUNT"]
    checkpoint = directory / f"checkpoint-{rank}"
    if checkpoint.exists():
        print(json.dumps({"restart": restarts, "checkpoint": checkpoint.read_text()}), flush=True)
        return 0

    def save(_signum: int, _frame: object) -> None:
        checkpoint.write_text(f"saved at restart {restarts}")
        sys.exit(0)

    signal.signal(signal.SIGTERM, save)
    (directory / f"pid-{rank}").write_text(str(os.getpid()))
    time.sleep(120)
    return 1


def main() -> int:
    mode = sys.argv[1]
    per_gpu = "RANK" in os.environ
    rank = int(os.environ["RANK"] if per_gpu else os.environ["NODE_RANK"])
    world = int(os.environ["WORLD_SIZE"] if per_gpu else os.environ["NNODES"])
    if mode in ("per-node", "per-gpu"):
        report: dict[str, object] = {k: os.environ[k] for k in KEYS if k in os.environ}
        report["sum"] = all_reduce(rank, world, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
        print(json.dumps(report), flush=True)
        return 0
    if mode == "fail-on-rank-1-quickly":
        if rank == 1:
            return 3
        time.sleep(1)
        print("finished", flush=True)
        return 0
    directory = Path(sys.argv[2])
    if mode == "requeue":
        return requeue(directory, rank)

    def record(signum: int, _frame: object) -> None:
        (directory / f"signal-{rank}").write_text(signal.Signals(signum).name)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGINT, record)  # before the pid file: the test signals once it sees every pid
    signal.signal(signal.SIGTERM, record)
    (directory / f"pid-{rank}").write_text(str(os.getpid()))
    if mode == "fail-on-rank-1" and rank == 1:
        while len(list(directory.glob("pid-*"))) < world:  # every rank is up: the failure must stop them
            time.sleep(0.05)
        return 3
    time.sleep(120)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: a throwaway pool with two simulated H100-80GB, four workloads sharing it, then MIG.

Starts vgpud (embedded etcd, simulated GPUs), runs example workloads that share the GPUs (the last one
has to wait in the queue until another releases), shows the pool through vgpuctl while they run and
after; then switches one GPU to MIG mode and runs two workloads on MIG instances created for them; then a
project with a quota claims the other GPU back from a borrowing job, which checkpoints, yields and resumes;
then `vgpu run` runs a command on a slice, and a two-node job on a second pool of two daemons (mutual TLS
between them) whose ranks meet at MASTER_ADDR:MASTER_PORT. Exits 0 only when every step worked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vgpu.testing import local_pool

HERE = Path(__file__).resolve().parent
JOBS = [
    # name, memory, compute, seconds
    ("train-a", "40GiB", "0.5", 4.0),
    ("train-b", "40GiB", "0.5", 4.0),
    ("notebook", "20GiB", "0.25", 2.0),
    ("big-eval", "70GiB", "0.8", 1.0),  # does not fit until the notebook is done: it queues
]


def vgpuctl(env: dict[str, str], *args: str) -> None:
    print(f"\n$ vgpuctl {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "vgpuctl", *args], env=env, check=True)


MIG_JOBS = [("infer-a", "3g.40gb"), ("infer-b", "1g.10gb")]


def run_mig(env: dict[str, str]) -> list[int]:
    """GPU 1 goes to MIG mode; two workloads each get a MIG instance of their own."""
    listing = subprocess.run(
        [sys.executable, "-m", "vgpuctl", "gpus", "--json"], env=env, check=True, capture_output=True, text=True
    )
    second = json.loads(listing.stdout)[1]["uuid"]
    vgpuctl(env, "gpu", "mode", second, "mig")
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "workload.py"), "--name", name, "--mig", profile, "--seconds", "2"], env=env
        )
        for name, profile in MIG_JOBS
    ]
    time.sleep(1.5)
    vgpuctl(env, "mig", "show")
    codes = [p.wait(timeout=60) for p in procs]
    vgpuctl(env, "mig", "show")
    return codes


def run_fair(env: dict[str, str]) -> list[int]:
    """Fair sharing on GPU 0: nlp borrows it (no quota), vision (deserved 1 GPU) claims it back by preemption."""
    vgpuctl(env, "quota", "set", "vision", "--deserved", "1gpu")
    vgpuctl(env, "quota", "set", "nlp", "--deserved", "0gpu", "--over-quota-weight", "1")
    job = [sys.executable, str(HERE / "checkpointed.py")]
    borrower = subprocess.Popen(
        [*job, "--name", "nlp-train", "--project", "nlp", "--priority", "best-effort", "--steps", "80"], env=env
    )
    time.sleep(1.5)  # the borrower holds the GPU before the owner arrives; nothing waits on this
    owner = subprocess.Popen([*job, "--name", "vision-train", "--project", "vision", "--steps", "10"], env=env)
    time.sleep(1.5)
    vgpuctl(env, "queue")
    vgpuctl(env, "quota", "list")
    codes = [owner.wait(timeout=60), borrower.wait(timeout=60)]
    listing = subprocess.run(
        [sys.executable, "-m", "vgpuctl", "leases", "--all", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    preempted = [x for x in json.loads(listing.stdout) if x.get("project") == "nlp" and x.get("preemptions")]
    if not preempted:
        print("demo: the borrowing nlp job was never preempted", file=sys.stderr)
        codes.append(1)
    return codes


def vgpu_run(env: dict[str, str], *args: str) -> int:
    print(f"\n$ vgpu run {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "vgpu", "run", *args], env=env, check=False).returncode


SHOW_ENV = "import os; print('CMD sees CUDA_VISIBLE_DEVICES', os.environ['CUDA_VISIBLE_DEVICES'])"


def run_two_nodes() -> int:
    """Two daemons of one pool (etcd shared, node certificates from `vgpuctl pki`); one job on both."""
    from two_nodes import two_node_pool  # noqa: PLC0415 -- the demo's own helper, beside this file

    with two_node_pool() as (first, _second):
        env = {**os.environ, **first.env(), "COLUMNS": "160"}
        vgpuctl(env, "nodes")
        return vgpu_run(env, "--gpus", "2", "--gang", "--any-node", "--", sys.executable, str(HERE / "rendezvous.py"))


def main() -> int:
    started = time.monotonic()
    with local_pool(sim="h100-80gb:2") as pool:
        env = {**os.environ, **pool.env(), "COLUMNS": "160"}
        print(f"vgpud is up at {pool.endpoint} (state in {pool.state_dir})", flush=True)
        vgpuctl(env, "nodes")
        vgpuctl(env, "gpus")
        procs = []
        for name, memory, compute, seconds in JOBS:
            cmd = [sys.executable, str(HERE / "workload.py"), "--name", name, "--memory", memory]
            cmd += ["--compute", compute, "--seconds", str(seconds)]
            procs.append(subprocess.Popen(cmd, env=env))
            time.sleep(0.3)  # staged arrivals make the queueing visible; nothing waits on this
        time.sleep(1.0)
        vgpuctl(env, "gpus")
        vgpuctl(env, "leases")
        codes = [p.wait(timeout=90) for p in procs]
        vgpuctl(env, "gpus")
        vgpuctl(env, "leases", "--all")
        codes += run_mig(env)
        codes += run_fair(env)
        codes.append(vgpu_run(env, "--memory", "10GiB", "--compute", "0.25", "--", sys.executable, "-c", SHOW_ENV))
    codes.append(run_two_nodes())
    if any(codes):
        print(f"\ndemo FAILED: workload exit codes {codes}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    total = len(JOBS) + len(MIG_JOBS) + 3
    print(
        f"\ndemo OK: {total} workloads shared 2 GPUs (2 on MIG instances, 1 preempted and resumed, 1 through vgpu "
        f"run), then a job ran on two nodes, in {took:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make demo`: a throwaway pool with two simulated H100-80GB, told as a story in numbered sections.

1. Four workloads share the two GPUs; the last one does not fit and waits in the queue (shown while it waits).
2. One GPU switches to MIG mode; two workloads get MIG instances made for them (shown while they exist).
3. A project with a quota claims its GPU back from a borrowing job, which checkpoints, yields and resumes.
4. `vgpu run` runs a plain command on a slice.
5. A job on two nodes (a second pool of two daemons, mutual TLS between them) whose ranks meet at
   MASTER_ADDR:MASTER_PORT.
Workloads write to their own logs, printed after each section, so their lines never cut into the tables. A
closing summary says what ran where, how long it waited, and what was preempted. Exits 0 only when every step
worked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vgpu.testing import local_pool

HERE = Path(__file__).resolve().parent
JOBS = [
    # name, memory, compute, seconds
    ("train-a", "40GiB", "0.5", 8.0),
    ("train-b", "40GiB", "0.5", 8.0),
    ("notebook", "20GiB", "0.25", 5.0),
    ("big-eval", "70GiB", "0.8", 2.0),  # does not fit until the notebook is done: it queues
]
MIG_JOBS = [("infer-a", "3g.40gb"), ("infer-b", "1g.10gb")]
SHOW_ENV = "import os; print('CMD sees CUDA_VISIBLE_DEVICES', os.environ['CUDA_VISIBLE_DEVICES'])"
WAIT_S = 60.0


@dataclass
class Workload:
    """One example workload process, its log file and what it asked for."""

    name: str
    asked: str
    proc: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def said(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.lines())


class Story:
    """The sections, the workloads started in them and the summary at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.section = 0
        self.workloads: list[Workload] = []
        self.codes: list[int] = []

    def title(self, text: str) -> None:
        self.section += 1
        print(f"\n{'=' * 100}\n{self.section}. {text}\n{'=' * 100}", flush=True)

    def vgpuctl(self, *args: str) -> None:
        print(f"\n$ vgpuctl {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, "-m", "vgpuctl", *args], env=self.env, check=True)

    def vgpuctl_json(self, *args: str) -> list[dict[str, object]]:
        done = subprocess.run(
            [sys.executable, "-m", "vgpuctl", *args, "--json"], env=self.env, check=True, capture_output=True
        )
        listed: list[dict[str, object]] = json.loads(done.stdout)
        return listed

    def start(self, name: str, asked: str, argv: list[str]) -> Workload:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        workload = Workload(name, asked, proc, log)
        self.workloads.append(workload)
        return workload

    def until(self, what: str, done: Callable[[], bool]) -> None:
        """Wait (polling the logs, at most WAIT_S) until `done()` holds; the demo fails if it never does."""
        deadline = time.monotonic() + WAIT_S
        while not done():
            if time.monotonic() > deadline:
                raise SystemExit(f"demo FAILED: waited {WAIT_S:.0f}s for {what}")
            time.sleep(0.1)

    def finish(self, workloads: list[Workload]) -> None:
        """Wait for the workloads, then print what each said, one block per workload."""
        self.codes += [w.proc.wait(timeout=90) for w in workloads]
        print("\nWhat the workloads printed:", flush=True)
        for workload in workloads:
            for line in workload.lines():
                print(f"  {line}", flush=True)

    def vgpu_run(self, *args: str) -> None:
        print(f"\n$ vgpu run {' '.join(args)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "vgpu", "run", *args], env=self.env, check=False)
        self.codes.append(done.returncode)


def sharing(story: Story) -> None:
    story.title("Four workloads share two H100-80GB; the last one waits in the queue")
    story.vgpuctl("gpus")
    started = []
    for name, memory, compute, seconds in JOBS:
        argv = [sys.executable, str(HERE / "workload.py"), "--name", name, "--memory", memory]
        argv += ["--compute", compute, "--seconds", str(seconds)]
        workload = story.start(name, f"{memory}, compute {compute}", argv)
        started.append(workload)
        story.until(f"{name} to be granted or queued", lambda: workload.said("granted|waiting"))  # noqa: B023 -- waited for at once
    big = started[-1]
    story.until("big-eval to wait in the queue", lambda: big.said("waiting"))
    story.vgpuctl("queue")
    story.vgpuctl("leases")
    story.vgpuctl("gpus")
    story.finish(started)
    story.vgpuctl("leases", "--all")


def mig(story: Story) -> None:
    story.title("GPU 1 switches to MIG mode; two workloads get MIG instances of their own")
    second = str(story.vgpuctl_json("gpus")[1]["uuid"])
    story.vgpuctl("gpu", "mode", second, "mig")
    started = [
        story.start(
            name,
            f"MIG {profile}",
            [sys.executable, str(HERE / "workload.py"), "--name", name, "--mig", profile, "--seconds", "3"],
        )
        for name, profile in MIG_JOBS
    ]
    story.until("both MIG workloads to hold their instances", lambda: all(w.said("granted") for w in started))
    story.vgpuctl("mig", "show")
    story.finish(started)
    story.vgpuctl("mig", "show")


def fair_share(story: Story) -> None:
    story.title("Project vision claims GPU 0 back from nlp, which borrowed it: checkpoint, yield, resume")
    story.vgpuctl("quota", "set", "vision", "--deserved", "1gpu")
    story.vgpuctl("quota", "set", "nlp", "--deserved", "0gpu", "--over-quota-weight", "1")
    job = [sys.executable, str(HERE / "checkpointed.py")]
    borrower = story.start(
        "nlp-train",
        "1 GPU, best-effort, project nlp",
        [*job, "--name", "nlp-train", "--project", "nlp", "--priority", "best-effort", "--steps", "80"],
    )
    story.until("nlp-train to hold the GPU", lambda: borrower.said("granted"))
    owner = story.start(
        "vision-train",
        "1 GPU, project vision",
        [*job, "--name", "vision-train", "--project", "vision", "--steps", "10"],
    )
    story.until("the preemption", lambda: borrower.said("PREEMPT"))
    story.vgpuctl("quota", "list")
    story.finish([owner, borrower])
    preempted = [x for x in story.vgpuctl_json("leases", "--all") if x.get("project") == "nlp" and x.get("preemptions")]
    if not preempted:
        print("demo: the borrowing nlp job was never preempted", file=sys.stderr)
        story.codes.append(1)


def vgpu_run(story: Story) -> None:
    story.title("vgpu run: a plain command on a slice, no Python written")
    story.vgpu_run("--memory", "10GiB", "--compute", "0.25", "--", sys.executable, "-c", SHOW_ENV)


def two_nodes(story: Story) -> None:
    from two_nodes import two_node_pool  # noqa: PLC0415 -- the demo's own helper, beside this file

    story.title("A job on two nodes: vgpud starts it on each, the ranks meet at MASTER_ADDR:MASTER_PORT")
    with two_node_pool() as (first, _second):
        env = story.env
        story.env = {**os.environ, **first.env(), "COLUMNS": "160"}
        try:
            story.vgpuctl("nodes")
            story.vgpu_run("--gpus", "2", "--gang", "--any-node", "--", sys.executable, str(HERE / "rendezvous.py"))
        finally:
            story.env = env


def summary(story: Story, took: float) -> None:
    print(f"\n{'=' * 100}\nSummary\n{'=' * 100}")
    print(f"{'WORKLOAD':<14}{'ASKED FOR':<34}{'ON':<18}{'WAITED':>8}  WHAT HAPPENED")
    for workload in story.workloads:
        lines = workload.lines()
        waited = next((m.group(1) for line in lines if (m := re.search(r"after ([0-9.]+)s", line))), "?")
        on = next((m.group(1)[:16] for line in lines if (m := re.search(r"CUDA_VISIBLE_DEVICES=(\S+)", line))), "?")
        events = ["granted"]
        if workload.said("waiting"):
            events.insert(0, "queued")
        if workload.said("PREEMPT"):
            events += ["preempted", "checkpointed"]
        if workload.said("RESUMED"):
            events.append("resumed")
        events.append("done" if workload.proc.returncode == 0 else f"FAILED ({workload.proc.returncode})")
        print(f"{workload.name:<14}{workload.asked:<34}{on:<18}{waited + 's':>8}  {', '.join(events)}")
    print(f"plus one command through `vgpu run` and one job on two nodes; {took:.1f}s in all")


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vgpu-demo-logs-") as logs, local_pool(sim="h100-80gb:2") as pool:
        story = Story({**os.environ, **pool.env(), "COLUMNS": "160"}, Path(logs))
        print(f"vgpud is up at {pool.endpoint} (state in {pool.state_dir}), with 2 simulated H100-80GB", flush=True)
        sharing(story)
        mig(story)
        fair_share(story)
        vgpu_run(story)
        two_nodes(story)
        summary(story, time.monotonic() - started)
    if any(story.codes):
        print(f"\ndemo FAILED: exit codes {story.codes}", file=sys.stderr)
        return 1
    print("\ndemo OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

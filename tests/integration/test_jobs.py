"""`vgpu run` across nodes: three daemons on a 3-member etcd, each on its own loopback address, mutual TLS
between them with node certificates from `vgpuctl pki`; ranks that really meet at MASTER_ADDR:MASTER_PORT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

import vgpu
from tests.etcd_cluster import EtcdCluster
from tests.integration.conftest import vgpuctl, wait_until
from tests.support import free_ports
from vgpu.testing import LocalPool

RUN = [sys.executable, "-m", "vgpu", "run"]
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
ALL_REDUCE = Path(__file__).with_name("job_allreduce.py")


def pki(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vgpuctl", "pki", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


@dataclass
class Nodes:
    """Three daemons of one pool; `launcher` is the one `vgpu run` talks to."""

    daemons: list[LocalPool]
    names: dict[str, str]
    """Node name -> its loopback address."""

    @property
    def launcher(self) -> LocalPool:
        return self.daemons[0]

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RUN, *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*RUN, *args], env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def env(self) -> dict[str, str]:
        return {**os.environ, "VGPU_ENDPOINT": self.launcher.endpoint}

    def leases(self) -> list[vgpu.LeaseInfo]:
        with self.launcher.pool() as pool:
            return pool.leases()


def start_nodes(base: Path, etcd: EtcdCluster, *, refuse_root_on: int | None = None) -> Iterator[Nodes]:
    pki("init", str(base / "pki"), "--cluster", "default")
    for i, host in enumerate(HOSTS):
        pki("issue", str(base / "pki"), f"node-{i}", "--role", "node", "--host", host)
    ports = free_ports(len(HOSTS))
    with ExitStack() as stack:
        daemons = []
        for i, (host, port) in enumerate(zip(HOSTS, ports, strict=True)):
            config = base / f"node-{i}.toml"
            allow = "false" if i == refuse_root_on else "true"
            config.write_text(f"[jobs]\nallow_root = {allow}\nstop_grace_s = 2.0\n")
            args = [
                "--etcd",
                ",".join(etcd.endpoints),
                "--listen",
                f"{host}:{port}",
                "--tls-cert",
                str(base / "pki" / f"node-{i}.pem"),
                "--tls-key",
                str(base / "pki" / f"node-{i}-key.pem"),
                "--tls-client-ca",
                str(base / "pki" / "ca.pem"),
                "--config",
                str(config),
            ]
            daemon = stack.enter_context(LocalPool("h100-80gb:2", extra_args=args, ttl=5))
            daemons.append(daemon)
        yield Nodes(daemons, {d.node_name: h for d, h in zip(daemons, HOSTS, strict=True)})


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    base = tmp_path_factory.mktemp("jobs")
    cluster = EtcdCluster(base / "etcd", size=3)
    cluster.start()
    try:
        yield from start_nodes(base, cluster)
    finally:
        cluster.close()


def lines_of(stdout: str) -> dict[str, list[str]]:
    """Output lines by their `[node ...]` prefix."""
    by_prefix: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        prefix, _, rest = line.partition("] ")
        by_prefix.setdefault(prefix.removeprefix("["), []).append(rest)
    return by_prefix


def test_ranks_on_every_node_meet_at_the_master_and_all_reduce(nodes: Nodes) -> None:
    done = nodes.run("--gpus", "6", "--gang", "--any-node", "--", sys.executable, str(ALL_REDUCE), "per-node")
    assert done.returncode == 0, done.stderr
    seen = {node: json.loads(lines[-1]) for node, lines in lines_of(done.stdout).items()}
    assert set(seen) == set(nodes.names)
    first = min(nodes.names)
    for node, report in seen.items():
        assert report["MASTER_ADDR"] == nodes.names[first]  # the first node's advertised address
        assert report["PET_MASTER_ADDR"] == report["MASTER_ADDR"]
        assert report["MASTER_PORT"] == report["PET_MASTER_PORT"] == seen[first]["MASTER_PORT"]
        assert (report["NNODES"], report["PET_NNODES"]) == ("3", "3")
        assert report["NODE_RANK"] == report["PET_NODE_RANK"] == str(sorted(nodes.names).index(node))
        assert report["LOCAL_WORLD_SIZE"] == report["PET_NPROC_PER_NODE"] == "2"
        assert len(report["CUDA_VISIBLE_DEVICES"].split(",")) == 2
        assert report["sum"] == 0 + 1 + 2  # every node rank, added up over TCP at MASTER_ADDR:MASTER_PORT
    assert "rendezvous at" in done.stderr
    assert nodes.leases() == []


def test_per_gpu_ranks_get_one_gpu_each_and_files_per_rank(nodes: Nodes, tmp_path: Path) -> None:
    out = tmp_path / "logs"
    done = nodes.run(
        "--gpus", "4", "--gang", "--any-node", "--per-gpu", "--output", str(out), "--",
        sys.executable, str(ALL_REDUCE), "per-gpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # it all went to the files
    reports = [json.loads((out / f"rank-{r}.out").read_text().splitlines()[-1]) for r in range(4)]
    assert [r["RANK"] for r in reports] == ["0", "1", "2", "3"]
    assert {r["WORLD_SIZE"] for r in reports} == {"4"}
    assert all(r["sum"] == 0 + 1 + 2 + 3 for r in reports)
    devices = [r["CUDA_VISIBLE_DEVICES"] for r in reports]
    assert len(set(devices)) == 4
    assert all("," not in d for d in devices)
    assert {r["LOCAL_RANK"] for r in reports} <= {"0", "1"}


def test_a_failing_rank_stops_the_others_and_its_status_is_the_jobs(nodes: Nodes, tmp_path: Path) -> None:
    done = nodes.run(
        "--gpus", "6", "--gang", "--any-node", "--",
        sys.executable, str(ALL_REDUCE), "fail-on-rank-1", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "rank 1 on" in done.stderr
    pids = [int(p.read_text()) for p in tmp_path.glob("pid-*")]
    assert len(pids) == 3
    for pid in pids:
        wait_until(stopped(pid), what=f"rank process {pid} to be stopped")
    keep = nodes.run(
        "--gpus", "6", "--gang", "--any-node", "--keep-going", "--",
        sys.executable, str(ALL_REDUCE), "fail-on-rank-1-quickly",
    )  # fmt: skip
    assert keep.returncode == 3, keep.stderr
    assert len([line for line in keep.stdout.splitlines() if line.endswith("finished")]) == 2


def stopped(pid: int) -> Callable[[], bool]:
    return lambda: not alive(pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def test_ctrl_c_of_the_launcher_reaches_every_rank(nodes: Nodes, tmp_path: Path) -> None:
    job = nodes.popen(
        "--gpus", "6", "--gang", "--any-node", "--", sys.executable, str(ALL_REDUCE), "wait", str(tmp_path)
    )
    with job:
        wait_until(lambda: len(list(tmp_path.glob("pid-*"))) == 3, what="three ranks")
        job.send_signal(signal.SIGINT)
        _, err = job.communicate(timeout=30)
    assert job.returncode == 130, err
    assert sorted(p.read_text() for p in tmp_path.glob("signal-*")) == ["SIGINT"] * 3
    wait_until(lambda: nodes.leases() == [], what="the lease released")


def test_a_launcher_killed_with_sigkill_leaves_no_rank_behind(nodes: Nodes, tmp_path: Path) -> None:
    job = nodes.popen(
        "--gpus", "6", "--gang", "--any-node", "--", sys.executable, str(ALL_REDUCE), "wait", str(tmp_path)
    )
    with job:
        wait_until(lambda: len(list(tmp_path.glob("pid-*"))) == 3, what="three ranks")
        job.kill()
        job.wait(timeout=10)
    for pid in (int(p.read_text()) for p in tmp_path.glob("pid-*")):
        wait_until(stopped(pid), what=f"rank process {pid} to be stopped", timeout=20)
    wait_until(lambda: nodes.leases() == [], what="the lease to expire (TTL 5 s)", timeout=30)


def test_an_evicted_lease_stops_every_rank(nodes: Nodes, tmp_path: Path) -> None:
    job = nodes.popen(
        "--gpus", "6", "--gang", "--any-node", "--", sys.executable, str(ALL_REDUCE), "wait", str(tmp_path)
    )
    with job:
        wait_until(lambda: len(list(tmp_path.glob("pid-*"))) == 3, what="three ranks")
        (lease,) = nodes.leases()
        assert vgpuctl(nodes.launcher, "evict", lease.id).returncode == 0
        _, err = job.communicate(timeout=30)
    assert job.returncode == 75, err
    assert "lease" in err
    for pid in (int(p.read_text()) for p in tmp_path.glob("pid-*")):
        assert not alive(pid)


def test_a_preempted_job_is_requeued_on_every_node_with_its_restart_count(nodes: Nodes, tmp_path: Path) -> None:
    job = nodes.popen(
        "--gpus", "4", "--gang", "--any-node", "--", sys.executable, str(ALL_REDUCE), "requeue", str(tmp_path)
    )
    with job:
        (lease,) = wait_until(nodes.leases, what="the job's lease")
        ranks = len(lease.nodes)
        wait_until(lambda: len(list(tmp_path.glob("pid-*"))) == ranks, what="every rank")
        assert vgpuctl(nodes.launcher, "preempt", lease.id, "--grace", "30s").returncode == 0
        out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    assert "vgpu: preempted (" in err
    assert "restarting the job (restart 1)" in err
    reports = [json.loads(lines[-1]) for lines in lines_of(out).values()]
    assert reports == [{"restart": "1", "checkpoint": "saved at restart 0"}] * ranks
    assert nodes.leases() == []


def test_job_options_that_clash_are_one_line_and_exit_2(nodes: Nodes) -> None:
    for args in (("--ray-args", "--num-cpus=1"), ("--ray", "--per-gpu")):
        done = nodes.run("--gpus", "2", *args, "--", "true")
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1
        assert "--ray" in done.stderr
    assert nodes.leases() == []


def test_a_missing_command_on_the_nodes_is_127(nodes: Nodes) -> None:
    done = nodes.run("--gpus", "4", "--gang", "--any-node", "--", "/no/such/command-vgpu")
    assert done.returncode == 127
    assert "command not found" in done.stderr
    assert nodes.leases() == []


@pytest.fixture
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    base = tmp_path_factory.mktemp("refusing")
    cluster = EtcdCluster(base / "etcd", size=1)
    cluster.start()
    try:
        yield from start_nodes(base, cluster, refuse_root_on=2)
    finally:
        cluster.close()


def test_a_node_that_refuses_ends_the_job_everywhere_and_is_named(refusing: Nodes, tmp_path: Path) -> None:
    done = refusing.run(
        "--gpus", "6", "--gang", "--any-node", "--", sys.executable, str(ALL_REDUCE), "wait", str(tmp_path)
    )
    assert done.returncode == 70, done.stderr
    refuser = refusing.daemons[2].node_name
    assert f"{refuser} refused" in done.stderr
    assert "allow_root" in done.stderr
    for pid in (int(p.read_text()) for p in tmp_path.glob("pid-*")):
        assert not alive(pid)
    assert refusing.leases() == []


@pytest.fixture
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    base = tmp_path_factory.mktemp("fresh")
    cluster = EtcdCluster(base / "etcd", size=1)
    cluster.start()
    try:
        yield from start_nodes(base, cluster)
    finally:
        cluster.close()


def test_a_node_lost_mid_job_ends_it_everywhere_with_its_name(fresh: Nodes, tmp_path: Path) -> None:
    job = fresh.popen(
        "--gpus", "6", "--gang", "--any-node", "--", sys.executable, str(ALL_REDUCE), "wait", str(tmp_path)
    )
    with job:
        wait_until(lambda: len(list(tmp_path.glob("pid-*"))) == 3, what="three ranks")
        lost = fresh.daemons[2]
        lost.kill()
        _, err = job.communicate(timeout=60)
    assert job.returncode in (70, 75), err  # the node's stream breaks first (70) or its lease ends (75)
    assert lost.node_name in err
    for pid in (int(p.read_text()) for p in tmp_path.glob("pid-*")):
        wait_until(stopped(pid), what=f"rank process {pid} to be stopped", timeout=20)


def test_torchrun_needs_no_arguments_on_a_lease_across_nodes(nodes: Nodes) -> None:
    pytest.importorskip("torch", reason="torch is not installed here (it is not a vgpu dependency)")
    worker = Path(__file__).with_name("job_torch.py")
    done = nodes.run(
        "--gpus", "4", "--gang", "--any-node", "--",
        sys.executable, "-m", "torch.distributed.run", str(worker), timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(rest) for lines in lines_of(done.stdout).values() for rest in lines if rest.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1, 2, 3]  # torchrun started PET_NPROC_PER_NODE per node
    assert {r["world"] for r in reports} == {4}
    assert {r["sum"] for r in reports} == {0 + 1 + 2 + 3}  # gloo all-reduce across the nodes
    assert len({r["master"] for r in reports}) == 1


RAY_ARGS = "--include-dashboard=false --num-cpus=1 --object-store-memory=78643200 --disable-usage-stats"


def test_ray_on_a_gang_lease_of_two_nodes(nodes: Nodes, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is in the dev extras: pip install -e '.[dev]'")
    driver = Path(__file__).with_name("ray_driver.py")
    done = nodes.run(
        "--gpus", "4", "--gang", "--any-node", "--ray", "--ray-args", RAY_ARGS, "--",
        sys.executable, str(driver), timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if '"tasks"' in line).partition("] ")[2])
    assert report["resources"]["GPU"] == 4
    assert report["resources"]["vgpu_memory_mib"] == 4 * report["resources"]["vgpu_memory_mib"] // 4 > 4 * 79_000
    assert report["resources"]["vgpu_compute_milli"] == 4000
    tasks = report["tasks"]
    started = next(line for line in done.stderr.splitlines() if "started on" in line)
    lease_nodes = started.partition("started on ")[2].partition(";")[0].split(", ")
    assert len(lease_nodes) >= 2
    assert len({t["node"] for t in tasks}) == len(lease_nodes)  # a Ray node per lease node, each ran a task
    cuda = [t["cuda"] for t in tasks]
    assert len(set(cuda)) == 4  # one lease GPU each
    assert all(c.startswith("GPU-") for c in cuda)
    assert nodes.leases() == []
    found = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True, check=False)
    ray_left = [int(pid) for pid in found.stdout.split() if alive(int(pid))]  # zombies are gone already
    assert ray_left == [], "a Ray process outlived the job"

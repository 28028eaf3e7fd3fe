"""bench/replay.py end to end on tiny inline traces: exact ratios, constraints honoured, bad CSVs refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPLAY = ROOT / "bench" / "replay.py"
FULL_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"
)
NODES = "sn,cpu_milli,memory_mib,gpu,model\nn1,6000,65536,2,T4\nn2,6000,65536,2,T4\n"


def run(tmp_path: Path, nodes: str, pods: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "nodes.csv").write_text(nodes)
    (tmp_path / "openb_pod_list_default.csv").write_text(pods)
    return subprocess.run(
        [
            sys.executable,
            str(REPLAY),
            "--nodes",
            str(tmp_path / "nodes.csv"),
            "--pods",
            str(tmp_path / "openb_pod_list_default.csv"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    parsed = [json.loads(line) for line in result.stdout.splitlines()]
    return {line["policy"]: line for line in parsed}


def test_cpu_bound_cluster_gives_exact_ratios(tmp_path: Path) -> None:
    # 4 GPUs (4000 milli); pods of 500 milli and 2000 CPU: 130 % arrives after 11 pods, CPU admits 3 per
    # node, so 6 pods land (3000 milli = 75 %) whatever the seed, and 5 fail.
    pods = f"{FULL_HEADER}\np1,2000,1024,1,500,,LS,Running,0,10,0\n"
    out = lines(run(tmp_path, NODES, pods, "--seeds", "2", "--policy", "bestfit", "fgd", "fgd-host"))
    assert set(out) == {"bestfit", "fgd", "fgd-host"}
    for line in out.values():
        assert line["trace"] == "openb_pod_list_default"
        assert line["seeds"] == 2
        assert line["pods_sampled"] == 11
        assert line["alloc_ratio_100"] == 75.0
        assert line["alloc_ratio_130"] == 75.0
        assert line["failed_pods"] == 5
        assert line["frag_rate_100"] == 0.0  # every idle 500 still fits a 500 pod (GPU shapes only)
        assert line["frag_rate_cpu_100"] == 100.0  # but no node has CPU left for one
        assert line["fgd_published_100"] == 95.23
    assert out["fgd"]["bestfit_alloc_ratio_100"] == 75.0
    assert out["fgd"]["meets_fgd_published_100"] is False


def test_short_five_column_pod_list_and_whole_gpus(tmp_path: Path) -> None:
    # Whole-GPU pods with CPU to spare: each fills one GPU; 4 land, the 130 % sample has 6 pods.
    pods = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np1,1000,1024,1,1000\n"
    out = lines(run(tmp_path, NODES, pods, "--seeds", "1", "--policy", "fgd"))
    assert out["fgd"]["alloc_ratio_100"] == 100.0
    assert out["fgd"]["alloc_ratio_130"] == 100.0
    assert out["fgd"]["failed_pods"] == 2


def test_gpu_model_constraint_is_honoured(tmp_path: Path) -> None:
    pods = f"{FULL_HEADER}\np1,1000,1024,1,500,A100|H100,LS,Running,0,10,0\n"
    out = lines(run(tmp_path, NODES, pods, "--seeds", "1", "--policy", "bestfit", "fgd"))
    for line in out.values():
        assert line["alloc_ratio_130"] == 0.0
        assert line["failed_pods"] == line["pods_sampled"]


def test_host_memory_constraint_is_honoured(tmp_path: Path) -> None:
    # One pod asks more host memory than any node has (10 milli-GPU); whole-GPU pods fit. Only whole GPUs
    # land, so the allocation stays a multiple of 25 %.
    pods = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nbig-mem,1000,99999999,1,10\nwhole,1000,1024,1,1000\n"
    out = lines(run(tmp_path, NODES, pods, "--seeds", "3", "--policy", "bestfit", "fgd-host"))
    for line in out.values():
        seeds = line["per_seed"]
        assert all(alloc > 0 and alloc % 25 == 0 for alloc in seeds["alloc_ratio_130"])
        assert all(failed > 0 for failed in seeds["failed_pods"])


def test_more_gpus_than_any_node_has_fails(tmp_path: Path) -> None:
    pods = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nfour,1000,1024,4,1000\n"
    out = lines(run(tmp_path, NODES, pods, "--seeds", "1", "--policy", "bestfit", "fgd"))
    for line in out.values():
        assert line["alloc_ratio_130"] == 0.0
        assert line["failed_pods"] == line["pods_sampled"] == 2


def test_cpu_only_pods_take_host_room(tmp_path: Path) -> None:
    # A CPU-only pod takes all of a node's CPU: the GPU pod sampled with it can use only the other node.
    pods = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\ncpu,6000,1024,0,0\ngpu,3000,1024,1,1000\n"
    out = lines(run(tmp_path, NODES, pods, "--seeds", "2", "--policy", "bestfit"))
    assert max(out["bestfit"]["per_seed"]["alloc_ratio_130"]) <= 50.0


def test_time_mode_queues_and_decides(tmp_path: Path) -> None:
    # One GPU: b waits for a (granted at 100 after 90 s), then c (no GPU) behind it; d and e never fit.
    nodes = "sn,cpu_milli,memory_mib,gpu,model\nn1,16000,65536,1,T4\n"
    pods = (
        f"{FULL_HEADER}\n"
        "a,2000,1024,1,1000,,LS,Running,0,100,0\n"
        "b,2000,1024,1,1000,,BE,Running,10,60,10\n"
        "c,1000,1024,0,0,,Burstable,Running,20,30,20\n"
        "d,2000,1024,1,500,A100,LS,Running,30,40,30\n"
        "e,2000,1024,2,1000,,LS,Running,30,40,30\n"
    )
    out = lines(run(tmp_path, nodes, pods, "--mode", "time", "--policy", "bestfit", "fgd"))
    for line in out.values():
        assert (line["pods"], line["placed"], line["waited"], line["failed"], line["never_fits"]) == (5, 3, 2, 2, 2)
        assert line["queue_delay_p95_s"] == 90.0
        assert line["decide_calls"] == 1
        assert line["mean_alloc_ratio"] == 100.0
        assert line["span_s"] == 150.0
        assert line["by_priority"]["best-effort"]["waited"] == 1
        assert line["by_priority"]["train"]["waited"] == 1
        assert sum(p["pods"] for p in line["by_project"].values()) == 5


@pytest.mark.parametrize(
    ("nodes", "pods", "expected"),
    [
        (NODES, "name,cpu_milli,memory_mib,num_gpu\np1,1,1,1\n", "lacks column(s) gpu_milli"),
        (NODES, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np1,lots,1,1,500\n", "'cpu_milli' is 'lots'"),
        (NODES, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np1,1,1,1,0\n", "a one-GPU pod asks for 1..1000"),
        (NODES, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np1,1,1,1,500,extra\n", "more fields than the header"),
        (NODES, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n", "no pods listed"),
        ("sn,cpu\nn1,1\n", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np1,1,1,1,500\n", "lacks column(s)"),
        (NODES + "n1,1,1,1,T4\n", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np1,1,1,1,500\n", "listed twice"),
    ],
)
def test_malformed_csv_is_one_line_and_exit_2(tmp_path: Path, nodes: str, pods: str, expected: str) -> None:
    result = run(tmp_path, nodes, pods, "--seeds", "1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPLAY), "--nodes", str(tmp_path / "none.csv"), "--pods", str(tmp_path / "none.csv")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot read it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("name", "expected_gpu"), [("daemon", 2), ("bestfit", 1)])
def test_the_daemon_policy_learns_its_mix_from_the_requests_it_sees(
    monkeypatch: pytest.MonkeyPatch, name: str, expected_gpu: int
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from replay_cluster import SimCluster, shape_request
    from replay_policies import DAEMON_REBUILD, build
    from replay_trace import NodeSpec, PodSpec

    def pod(milli: int) -> PodSpec:
        return PodSpec(f"p{milli}", 100, 100, 1, milli)

    policy = build(name, [pod(500)])
    if policy.observe is not None:  # the daemon's mix: 500-milli requests seen; the third pod below rebuilds it
        changed = [policy.observe(shape_request(pod(500))) for _ in range(DAEMON_REBUILD - 3)]  # type: ignore[arg-type]  # a GPU pod
        assert not any(changed)
    cluster = SimCluster([NodeSpec("n1", 64_000, 1 << 20, 3, "T4")], policy)
    for i, milli in enumerate((500, 500, 400)):
        assert cluster.place(pod(milli), f"l{i}")
    # Until the rebuild the daemon's policy is best fit, and FGD would tie-break the same way anyway.
    assert [cluster.held[f"l{i}"].gpus for i in range(3)] == [(0,), (0,), (1,)]
    assert cluster.place(pod(300), "l3")
    # Now the daemon keeps GPU 1's 600 for a 500 and puts the 300 on the empty GPU 2; best fit squeezes it
    # into GPU 1.
    assert cluster.held["l3"].gpus == (expected_gpu,)

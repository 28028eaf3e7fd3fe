"""Who runs where in a job and with which variables (jobs/rendezvous.py), where vgpud publishes itself, and
how it finds its cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgpud._private.config import ConfigError, load_config
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.model import Isolation, LeaseState, Owner, ShapeRequest
from vgpud._private.jobs.cgroup import _own_cgroup_dir
from vgpud._private.jobs.config import NodeAddressConfig, advertised
from vgpud._private.jobs.rendezvous import Rendezvous, inherited, plan, process_environments

GIB = 1 << 30


def lease(*placements: tuple[str, str]) -> LeaseRecord:
    slices = tuple(
        SliceRecord(node, gpu, i, "H100", Isolation.WHOLE, 80 * GIB, 1000) for i, (node, gpu) in enumerate(placements)
    )
    request = ShapeRequest(Isolation.WHOLE, 80 * GIB, 1000, count=len(slices))
    return LeaseRecord("lease-1", "", LeaseState.GRANTED, "b", "", "", Owner(), request, slices, 1.0, 30, 0)


def test_nodes_take_ranks_by_name_and_ranks_run_on_across_them() -> None:
    plans = plan(lease(("b", "GPU-3"), ("a", "GPU-1"), ("b", "GPU-4"), ("a", "GPU-2"), ("c", "GPU-5")))
    assert [(p.node, p.node_rank, p.first_rank, p.devices) for p in plans] == [
        ("a", 0, 0, ("GPU-1", "GPU-2")),
        ("b", 1, 2, ("GPU-3", "GPU-4")),
        ("c", 2, 4, ("GPU-5",)),
    ]


MEET = Rendezvous("10.0.0.1", 29500, nnodes=3, world_size=5)
LAUNCHER = {
    "PATH": "/usr/bin",
    "HOME": "/home/alice",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    "VGPU_LEASE": "secret-of-another-lease",
    "RANK": "7",
    "PET_NNODES": "9",
    "LANG": "C.UTF-8",
}


def test_once_per_node_a_process_gets_torchruns_variables() -> None:
    node = plan(lease(("a", "GPU-1"), ("b", "GPU-3"), ("b", "GPU-4"), ("c", "GPU-5"), ("a", "GPU-2")))[1]
    (env,) = process_environments(
        LAUNCHER, {"CUDA_VISIBLE_DEVICES": "GPU-3,GPU-4", "VGPU_LEASE": "t"}, node, MEET, per_gpu=False,
        node_address="10.0.0.2",
    )  # fmt: skip
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-3,GPU-4"
    assert env["VGPU_LEASE"] == "t"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["NNODES"], env["NODE_RANK"]) == ("10.0.0.1", "29500", "3", "1")
    assert (env["PET_MASTER_ADDR"], env["PET_MASTER_PORT"]) == ("10.0.0.1", "29500")
    assert (env["PET_NNODES"], env["PET_NODE_RANK"], env["PET_NPROC_PER_NODE"]) == ("3", "1", "2")
    assert env["LOCAL_WORLD_SIZE"] == "2"
    assert env["VGPU_NODE_ADDRESS"] == "10.0.0.2"
    assert "RANK" not in env  # torchrun sets it for its own children
    assert "WORLD_SIZE" not in env
    assert "HOME" not in env  # the node sets the user's own
    assert (env["PATH"], env["LANG"]) == ("/usr/bin", "C.UTF-8")


def test_per_gpu_gives_each_slice_its_rank_and_only_its_gpu() -> None:
    node = plan(lease(("a", "GPU-1"), ("b", "GPU-3"), ("b", "GPU-4"), ("c", "GPU-5"), ("a", "GPU-2")))[1]
    envs = process_environments(
        LAUNCHER, {"CUDA_VISIBLE_DEVICES": "GPU-3,GPU-4"}, node, MEET, per_gpu=True, node_address="10.0.0.2"
    )
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"], e["CUDA_VISIBLE_DEVICES"]) for e in envs] == [
        ("2", "0", "5", "GPU-3"),
        ("3", "1", "5", "GPU-4"),
    ]
    assert all("PET_NNODES" not in e for e in envs)


def test_two_slices_of_one_gpu_are_two_ranks_on_that_gpu() -> None:
    node = plan(lease(("a", "GPU-1"), ("a", "GPU-1")))[0]
    envs = process_environments({}, {}, node, MEET, per_gpu=True, node_address="a")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["GPU-1", "GPU-1"]
    assert [e["RANK"] for e in envs] == ["0", "1"]


def test_the_launchers_lease_and_rendezvous_variables_are_not_inherited() -> None:
    assert inherited(LAUNCHER) == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}


@pytest.mark.parametrize(
    ("address", "listen", "expected"),
    [
        ("", None, ("gpu-07", "")),
        ("", "10.0.0.5:7070", ("10.0.0.5", "10.0.0.5:7070")),
        ("", "0.0.0.0:7070", ("gpu-07", "gpu-07:7070")),
        ("10.1.1.1", "0.0.0.0:7070", ("10.1.1.1", "10.1.1.1:7070")),
        ("", "[::]:7070", ("gpu-07", "gpu-07:7070")),
        ("fd00::5", "[::]:7070", ("fd00::5", "[fd00::5]:7070")),
    ],
)
def test_a_node_publishes_where_jobs_and_daemons_reach_it(
    address: str, listen: str | None, expected: tuple[str, str]
) -> None:
    assert advertised(NodeAddressConfig(address), listen, "gpu-07") == expected


def test_node_and_jobs_tables_are_range_checked() -> None:
    assert load_config(None, {"node.address": "10.0.0.5", "jobs.max_jobs": 3}).jobs.max_jobs == 3
    with pytest.raises(ConfigError, match=r"node\.address"):
        load_config(None, {"node.address": "http://x/"})
    with pytest.raises(ConfigError, match=r"jobs\.stop_grace_s.*finite"):
        load_config(None, {"jobs.stop_grace_s": float("nan")})
    with pytest.raises(ConfigError, match=r"jobs\.stop_grace_s: 0\.0 must be .* from 0\.1"):
        load_config(None, {"jobs.stop_grace_s": 0.0})
    with pytest.raises(ConfigError, match=r"jobs\.max_jobs"):
        load_config(None, {"jobs.max_jobs": 0})


def test_the_cgroup_v2_directory_comes_from_mountinfo_and_proc_cgroup(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n"
        "35 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw\n"
    )
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("4:memory:/x\n0::/system.slice/vgpud.service\n")
    assert _own_cgroup_dir(mountinfo, cgroup) == Path("/sys/fs/cgroup/unified/system.slice/vgpud.service")
    cgroup.write_text("4:memory:/x\n")
    with pytest.raises(OSError, match="no cgroup v2"):
        _own_cgroup_dir(mountinfo, cgroup)
    mountinfo.write_text("30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    with pytest.raises(OSError, match="no cgroup2"):
        _own_cgroup_dir(mountinfo, cgroup)

"""`vgpuctl mig show` and `vgpuctl mig plan` against the fake AdminService of test_vgpuctl_cli."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.unit import test_vgpuctl_cli
from tests.unit.test_vgpuctl_cli import MIG_FOREIGN, MIG_READY, UUID_A0, UUID_A1, UUID_B0, Daemon, Refusal, run
from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2, types_pb2

daemon = test_vgpuctl_cli.daemon
"""The fake vgpud fixture, shared: pytest finds a fixture by its name in the test module."""

LAYOUT = '[models."h100-80gb"]\nprofiles = ["4g.40gb@0", "1g.10gb@6"]\n'

A1_BLOCK = [
    "node-a gpu 1  GPU-1a2b9999…  h100-80gb  mode mig",
    "  slot 0 1 2 3 4 5 6 7",
    "       A A A A B . C .",
    "  A  @0  3g.40gb  ready    MIG-11111111…  lease-mig",
    "  B  @4  1g.10gb  warm     MIG-22222222…  -",
    "  C  @6  1g.10gb  foreign  MIG-33333333…  -",
    "  still fits: 1g.10gb x1, 1g.10gb+me x1",
]


def gpu_of(daemon: Daemon, uuid: str) -> types_pb2.Gpu:
    """The fake daemon's GPU with this uuid (what ListGpus will answer)."""
    return next(gpu for gpu in daemon.admin.gpus if gpu.uuid == uuid)


def blocks(out: str) -> list[list[str]]:
    """`mig show` output split into its per-GPU blocks of lines."""
    return [chunk.splitlines() for chunk in out.rstrip("\n").split("\n\n")]


def write_layout(tmp_path: Path, text: str = LAYOUT) -> Path:
    path = tmp_path / "layout.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- mig show ----------------------------------------------------------------------------------------


def test_mig_show_draws_one_block_per_mig_capable_gpu(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "mig", "show")
    assert result.code == 0, result.err
    assert result.err == ""
    shown = blocks(result.out)
    assert [block[0].split()[:3] for block in shown] == [
        ["node-a", "gpu", "0"],
        ["node-a", "gpu", "1"],
        ["node-b", "gpu", "0"],
        ["node-c", "gpu", "0"],
    ]
    assert shown[1] == A1_BLOCK
    assert shown[0] == [
        "node-a gpu 0  GPU-1a2b3c4d…  h100-80gb  mode shared",
        "  slot 0 1 2 3 4 5 6 7",
        "       . . . . . . . .",
        f"  MIG is off: vgpuctl gpu mode {UUID_A0} mig",
    ]
    assert shown[2][0] == "node-b gpu 0  GPU-5e6f7a8b…  a100-40gb  mode exclusive"
    assert shown[2][-1] == f"  MIG is off: vgpuctl gpu mode {UUID_B0} mig"
    assert daemon.admin.requests == [admin_pb2.ListGpusRequest()]


def test_mig_show_skips_gpus_without_mig_and_sends_the_node_filter(
    capsys: pytest.CaptureFixture[str], daemon: Daemon
) -> None:
    gpu_of(daemon, UUID_A0).mig_memory_slices = 0  # as a model without MIG
    result = run(capsys, daemon, "mig", "show", "--node", "node-a")
    assert result.code == 0, result.err
    assert blocks(result.out) == [A1_BLOCK]
    assert daemon.admin.requests == [admin_pb2.ListGpusRequest(node="node-a")]


def test_mig_show_marks_a_pending_mode_and_a_full_gpu(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    pending, full = gpu_of(daemon, UUID_A0), gpu_of(daemon, UUID_A1)
    pending.mode = types_pb2.GPU_MODE_MIG
    pending.mode_pending = True
    del full.mig_fits[:]
    shown = blocks(run(capsys, daemon, "mig", "show", "--node", "node-a").out)
    assert shown[0][0] == "node-a gpu 0  GPU-1a2b3c4d…  h100-80gb  mode mig (pending)"
    assert shown[0][-1] == "  still fits: nothing yet (the node daemon switches the hardware to MIG next)"
    assert shown[1][-1] == "  still fits: nothing"


def test_mig_show_on_a_4_slice_gpu_draws_4_cells(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    daemon.admin.gpus = [
        types_pb2.Gpu(
            uuid=UUID_A0,
            node="node-a",
            model="a30-24gb",
            mode=types_pb2.GPU_MODE_MIG,
            mig_memory_slices=4,
            mig_instances=[types_pb2.MigInstance(profile="2g.12gb", start=2, size=2)],
            mig_fits=[types_pb2.MigFit(profile="2g.12gb", more=1), types_pb2.MigFit(profile="1g.6gb", more=2)],
        )
    ]
    shown = blocks(run(capsys, daemon, "mig", "show").out)
    assert shown == [
        [
            "node-a gpu 0  GPU-1a2b3c4d…  a30-24gb  mode mig",
            "  slot 0 1 2 3",
            "       . . A A",
            "  A  @2  2g.12gb  unknown  -  -",
            "  still fits: 2g.12gb x1, 1g.6gb x2",
        ]
    ]


def test_mig_show_without_mig_gpus_says_so_and_exits_0(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    for gpu in daemon.admin.gpus:
        gpu.mig_memory_slices = 0
    result = run(capsys, daemon, "mig", "show")
    assert (result.code, result.out, result.err) == (0, "", "No MIG-capable GPUs found.\n")
    as_json = run(capsys, daemon, "mig", "show", "--json")
    assert (as_json.code, json.loads(as_json.out)) == (0, [])


def test_mig_show_json_has_the_mig_fields_with_full_uuids(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "mig", "show", "--json")
    assert result.code == 0, result.err
    gpus = json.loads(result.out)
    assert [gpu["uuid"] for gpu in gpus] == [UUID_A0, UUID_A1, UUID_B0, gpus[3]["uuid"]]
    assert set(gpus[1]) == {
        "node",
        "index",
        "uuid",
        "model",
        "mode",
        "mode_pending",
        "mig_memory_slices",
        "mig_instances",
        "mig_fits",
    }
    mig = gpus[1]
    assert (mig["mode"], mig["mode_pending"], mig["mig_memory_slices"]) == ("GPU_MODE_MIG", False, 8)
    assert mig["mig_instances"][0] == {
        "profile": "3g.40gb",
        "start": 0,
        "size": 4,
        "uuid": MIG_READY,
        "lease_id": "lease-mig",
        "state": "MIG_INSTANCE_STATE_READY",
    }
    assert mig["mig_instances"][2]["uuid"] == MIG_FOREIGN
    assert mig["mig_instances"][2]["state"] == "MIG_INSTANCE_STATE_FOREIGN"
    assert mig["mig_fits"] == [{"profile": "1g.10gb", "more": 1}, {"profile": "1g.10gb+me", "more": 1}]
    assert gpus[0]["mig_instances"] == []


def test_mig_without_a_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "mig")
    assert result.code == 2
    assert "show" in result.out
    assert "plan" in result.out
    assert daemon.admin.requests == []


# --- mig plan ----------------------------------------------------------------------------------------


def test_mig_plan_sends_the_file_and_prints_steps_and_a_summary(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path
) -> None:
    result = run(capsys, daemon, "mig", "plan", str(write_layout(tmp_path)))
    assert result.code == 0, result.err
    assert daemon.admin.requests == [admin_pb2.PlanMigLayoutRequest(layout_toml=LAYOUT)]
    lines = result.out.splitlines()
    assert lines[0].split() == ["ACTION", "NODE", "GPU", "PROFILE", "START", "BLOCKED", "BY"]
    assert lines[1].split() == ["destroy", "node-a", "GPU-1a2b9999…", "3g.40gb", "0", "lease", "lease-mig"]
    assert lines[2].split()[:5] == ["destroy", "node-a", "GPU-1a2b9999…", "1g.10gb", "4"]
    assert lines[2].endswith("  waits for 3g.40gb@0: lease lease-mig")
    assert lines[3].split()[:5] == ["create", "node-a", "GPU-1a2b9999…", "4g.40gb", "0"]
    assert lines[4].split() == ["keep", "node-a", "GPU-1a2b9999…", "1g.10gb", "6", "-"]
    assert lines[5].split()[:5] == ["create", "node-a", "GPU-1a2b3c4d…", "7g.80gb", "0"]
    assert lines[5].endswith(f"  GPU not in MIG mode: vgpuctl gpu mode {UUID_A0} mig")
    assert lines[6:] == ["", "2 to create, 2 to destroy, 1 to keep, 4 blocked (dry run: nothing was changed)"]
    assert daemon.admin.time_remaining[0] is not None


def test_mig_plan_json_is_the_list_of_steps(capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path) -> None:
    result = run(capsys, daemon, "mig", "plan", str(write_layout(tmp_path)), "--json")
    assert result.code == 0, result.err
    steps = json.loads(result.out)
    assert [step["action"] for step in steps] == [
        "ACTION_DESTROY",
        "ACTION_DESTROY",
        "ACTION_CREATE",
        "ACTION_KEEP",
        "ACTION_CREATE",
    ]
    assert steps[0] == {
        "action": "ACTION_DESTROY",
        "node": "node-a",
        "gpu_uuid": UUID_A1,
        "profile": "3g.40gb",
        "start": 0,
        "blocked_by": "lease lease-mig",
    }
    assert steps[3]["blocked_by"] == ""


def test_mig_plan_reads_the_layout_from_stdin(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(LAYOUT))
    result = run(capsys, daemon, "mig", "plan", "-", "--json")
    assert result.code == 0, result.err
    assert daemon.admin.requests == [admin_pb2.PlanMigLayoutRequest(layout_toml=LAYOUT)]


def test_mig_plan_with_nothing_to_do_says_so(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path
) -> None:
    daemon.admin.plan = admin_pb2.PlanMigLayoutResponse()
    result = run(capsys, daemon, "mig", "plan", str(write_layout(tmp_path)))
    assert result.code == 0, result.err
    assert result.out == (
        "nothing to do: no GPU the layout matches has or needs a MIG instance (dry run: nothing was changed)\n"
    )


def test_mig_plan_missing_file_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.toml"
    result = run(capsys, daemon, "mig", "plan", str(missing))
    assert (result.code, result.out) == (2, "")
    assert result.err_lines == [f"vgpuctl: error: layout file {str(missing)!r} does not exist"]
    assert daemon.admin.requests == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.mkdir(), "cannot read layout file {path!r}: Is a directory"),
        (lambda path: path.write_bytes(b"\xff\xfe profiles"), "layout file {path!r} is not UTF-8 text"),
    ],
    ids=["directory", "not-utf8"],
)
def test_mig_plan_unreadable_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    daemon: Daemon,
    tmp_path: Path,
    make: Callable[[Path], object],
    message: str,
) -> None:
    path = tmp_path / "layout.toml"
    make(path)
    result = run(capsys, daemon, "mig", "plan", str(path))
    assert result.code == 2
    assert result.err_lines == ["vgpuctl: error: " + message.format(path=str(path))]
    assert daemon.admin.requests == []


def test_mig_plan_refused_layout_exits_2_with_the_daemons_line(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path
) -> None:
    message = "models.h100-80gb.profiles[0]: h100-80gb has no MIG profile '3g.20gb'; its profiles: 1g.10gb, ..."
    daemon.admin.refusal = Refusal(grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_REQUEST, message)
    result = run(capsys, daemon, "mig", "plan", str(write_layout(tmp_path)))
    assert (result.code, result.out) == (2, "")
    assert result.err_lines == [f"vgpuctl: error: INVALID_REQUEST: {message}"]


def test_mig_plan_needs_a_file_argument(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "mig", "plan")
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert "LAYOUT.toml" in result.err
    assert daemon.admin.requests == []

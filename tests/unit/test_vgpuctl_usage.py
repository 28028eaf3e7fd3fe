"""`vgpuctl top` and `vgpuctl report` against a fake AdminService: tables, --json, --watch, bad input."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest

from tests.unit.test_vgpuctl_cli import FakeAdmin, GiB, Outcome, stamp
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from vgpuctl._private.app import main
from vgpuctl._private.verbs import top


def canned_usage() -> list[admin_pb2.LeaseUsage]:
    measured = admin_pb2.LeaseUsage(
        lease_id="lease-aaaaaaaaaaaa",
        project="vision",
        user="ada",
        node="gpu-node-1",
        state=types_pb2.LEASE_STATE_GRANTED,
        compute_milli=500,
        memory_budget_bytes=10 * GiB,
        memory_measured=True,
        memory_used_bytes=4 * GiB,
        utilization_measured=True,
        used_milli=250,
        processes=2,
    )
    measured.sampled_at.CopyFrom(stamp(3))
    idle = admin_pb2.LeaseUsage(
        lease_id="lease-bbbbbbbbbbbb",
        project="vision",
        user="bob",
        node="gpu-node-2",
        state=types_pb2.LEASE_STATE_GRANTED,
        compute_milli=1000,
        memory_budget_bytes=80 * GiB,
        memory_measured=True,
        memory_used_bytes=1 * GiB,
        utilization_measured=True,
        used_milli=0,
        processes=1,
    )
    idle.sampled_at.CopyFrom(stamp(5))
    idle.idle_since.CopyFrom(stamp(720))
    unmeasured = admin_pb2.LeaseUsage(
        lease_id="lease-cccccccccccc",
        project="nlp",
        user="cy",
        node="gpu-node-1",
        state=types_pb2.LEASE_STATE_GRANTED,
        compute_milli=250,
        memory_budget_bytes=20 * GiB,
    )
    return [measured, idle, unmeasured]


def canned_report() -> admin_pb2.GetUsageReportResponse:
    answer = admin_pb2.GetUsageReportResponse(
        projects=[
            admin_pb2.ProjectUsage(
                project="vision",
                leases=7,
                allocated_gpu_hours=40.0,
                used_gpu_hours=9.0,
                measured_allocated_gpu_hours=30.0,
                lease_hours=50.0,
                measured_lease_hours=40.0,
                memory_budget_gib_hours=800.0,
                memory_used_gib_hours=200.0,
                idle_leases=["lease-1", "lease-2", "lease-3", "lease-4", "lease-5"],
            ),
            admin_pb2.ProjectUsage(project="nlp", leases=1, allocated_gpu_hours=2.0, lease_hours=8.0),
        ],
        nodes=3,
    )
    answer.window_start.FromSeconds(1_700_000_000)
    answer.window_end.FromSeconds(1_700_086_400)
    return answer


class UsageAdmin(FakeAdmin):
    """FakeAdmin with the usage RPCs."""

    def __init__(self) -> None:
        super().__init__()
        self.usage = canned_usage()
        self.report = canned_report()

    def ListLeaseUsage(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.ListLeaseUsageRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListLeaseUsageResponse:
        self._enter(request, context)
        return admin_pb2.ListLeaseUsageResponse(
            leases=[u for u in self.usage if not request.project or u.project == request.project]
        )

    def GetUsageReport(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.GetUsageReportRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetUsageReportResponse:
        self._enter(request, context)
        return self.report


@dataclass
class UsageDaemon:
    endpoint: str
    admin: UsageAdmin


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[UsageDaemon]:
    monkeypatch.delenv("VGPU_ENDPOINT", raising=False)
    with tempfile.TemporaryDirectory(prefix="vgpuctl-") as directory:
        endpoint = f"unix://{directory}/vgpud.sock"
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        admin = UsageAdmin()  # type: ignore[abstract]  # the fair-share RPCs are faked in test_vgpuctl_fairshare
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        server.add_insecure_port(endpoint)
        server.start()
        try:
            yield UsageDaemon(endpoint, admin)
        finally:
            admin.release.set()
            server.stop(grace=None).wait()


def run(capsys: pytest.CaptureFixture[str], daemon: UsageDaemon, *args: str) -> Outcome:
    code = main(["--endpoint", daemon.endpoint, *args])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def test_top_shows_use_against_budget_and_dashes_for_the_unmeasured(
    capsys: pytest.CaptureFixture[str], daemon: UsageDaemon
) -> None:
    result = run(capsys, daemon, "top")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split()[:4] == ["LEASE", "PROJECT", "USER", "NODE"]
    measured = lines[1].split()
    assert measured[4:] == ["4GiB/10GiB", "40%", "0.25/0.50", "50%", "2", "-", "3s"]
    idle = lines[2].split()
    assert idle[4:9] == ["1GiB/80GiB", "1%", "0.00/1.00", "0%", "1"]
    assert idle[9] == "12m"  # flagged idle 12 minutes ago
    unmeasured = lines[3].split()
    assert unmeasured[4:] == ["-/20GiB", "-", "-/0.25", "-", "-", "-", "-"]
    projects = result.out.split("\n\n")[1].splitlines()
    assert projects[0].split()[0] == "PROJECT"
    assert projects[1].split() == ["nlp", "1", "-/20GiB", "-/0.25", "-", "0"]
    # vision: both measured; use is 0.25 GPU of 1.5 held
    assert projects[2].split() == ["vision", "2", "5GiB/90GiB", "0.25/1.50", "17%", "1"]


def test_top_project_filter_and_json(capsys: pytest.CaptureFixture[str], daemon: UsageDaemon) -> None:
    result = run(capsys, daemon, "top", "--project", "nlp", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert [row["lease_id"] for row in rows] == ["lease-cccccccccccc"]
    assert rows[0]["memory_measured"] is False
    assert daemon.admin.requests[-1] == admin_pb2.ListLeaseUsageRequest(project="nlp")


def test_the_default_project_reads_default_in_top_and_report(
    capsys: pytest.CaptureFixture[str], daemon: UsageDaemon
) -> None:
    unnamed, named, _ = canned_usage()
    unnamed.project = ""  # a lease that named no project
    named.project = "default"
    daemon.admin.usage = [unnamed, named]
    daemon.admin.report = admin_pb2.GetUsageReportResponse(projects=[admin_pb2.ProjectUsage(project="", leases=1)])
    result = run(capsys, daemon, "top")
    assert result.code == 0, result.err
    leases, projects = (part.splitlines() for part in result.out.split("\n\n"))
    assert [line.split()[1] for line in leases[1:]] == ["default", "default"]
    assert [line.split()[:2] for line in projects[1:]] == [["default", "2"]]  # one project, not two
    report = run(capsys, daemon, "report")
    assert report.out.splitlines()[1].split()[:2] == ["default", "1"]


def test_top_watch_redraws_until_interrupted(
    capsys: pytest.CaptureFixture[str], daemon: UsageDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(top, "pause", nap)
    result = run(capsys, daemon, "top", "--watch", "--interval", "3s")
    assert result.code == 0, result.err
    assert naps == [3.0, 3.0]
    assert result.out.count("lease-aaaaaaaaaaaa") == 2  # drawn twice, then Ctrl-C ends it quietly
    assert len(daemon.admin.requests) == 2


def test_top_with_nothing_held_says_so_on_stderr(capsys: pytest.CaptureFixture[str], daemon: UsageDaemon) -> None:
    daemon.admin.usage = []
    result = run(capsys, daemon, "top")
    assert (result.code, result.out) == (0, "")
    assert "No leases holding slices found." in result.err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--watch", "--interval", "0.1s"), "at least 0.5s"),
        (("--watch", "--json"), "do not go together"),
        (("--interval", "soon"), "cannot read 'soon' as a duration"),
    ],
)
def test_top_bad_flags_are_one_usage_line(
    capsys: pytest.CaptureFixture[str], daemon: UsageDaemon, args: tuple[str, ...], says: str
) -> None:
    result = run(capsys, daemon, "top", *args)
    assert result.code == 2
    assert says in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert daemon.admin.requests == []


def test_report_table_per_project(capsys: pytest.CaptureFixture[str], daemon: UsageDaemon) -> None:
    result = run(capsys, daemon, "report", "--since", "7d")
    assert result.code == 0, result.err
    sent = daemon.admin.requests[-1]
    assert isinstance(sent, admin_pb2.GetUsageReportRequest)
    assert sent.since.seconds == 7 * 86400
    lines = result.out.splitlines()
    vision = lines[1]
    assert vision.split()[:7] == ["vision", "7", "40.00", "9.00", "30%", "80%", "200.0/800.0"]
    assert vision.endswith("5: lease-1, lease-2, lease-3 (+2 more)")
    assert lines[2].split() == ["nlp", "1", "2.00", "-", "-", "0%", "0.0/0.0", "0"]
    assert lines[-1].startswith("from 2023-11-14T22:13:20Z to 2023-11-15T22:13:20Z, 3 node(s) reporting")


def test_report_default_window_is_left_to_the_daemon(capsys: pytest.CaptureFixture[str], daemon: UsageDaemon) -> None:
    result = run(capsys, daemon, "report", "--json")
    assert result.code == 0, result.err
    sent = daemon.admin.requests[-1]
    assert isinstance(sent, admin_pb2.GetUsageReportRequest)
    assert not sent.HasField("since")
    assert json.loads(result.out)["projects"][0]["idle_leases"][-1] == "lease-5"


def test_report_of_an_empty_window_says_so(capsys: pytest.CaptureFixture[str], daemon: UsageDaemon) -> None:
    daemon.admin.report = admin_pb2.GetUsageReportResponse()
    result = run(capsys, daemon, "report")
    assert (result.code, result.out) == (0, "")
    assert "No usage from" in result.err

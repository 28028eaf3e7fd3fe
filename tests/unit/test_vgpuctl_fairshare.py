"""`vgpuctl quota`, `vgpuctl queue` and `vgpuctl preempt` against a real in-process gRPC server (fake AdminService)."""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]  # no stubs ship
from grpc_status import rpc_status

from tests.unit.test_vgpuctl_cli import FakeAdmin, GiB, Outcome, Refusal, canned_leases, stamp
from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from vgpuctl._private.app import main

WARNING = "deserved quotas add up to 10 GPU, past the pool's 8 GPU"
NOT_PREEMPTIBLE_LEASE = "lease-prod"


def vision_quota() -> types_pb2.Quota:
    return types_pb2.Quota(
        project="vision",
        deserved_milli=4000,
        deserved_memory_bytes=320 * GiB,
        over_quota_weight=2,
        limit_milli=8000,
        limit_memory_bytes=640 * GiB,
    )


def research_quota() -> types_pb2.Quota:
    return types_pb2.Quota(project="research", deserved_milli=2500, over_quota_weight=1)


def seconds(value: float) -> Duration:
    span = Duration()
    span.FromNanoseconds(int(value * 1e9))
    return span


def canned_classes() -> list[types_pb2.PriorityClass]:
    return [
        types_pb2.PriorityClass(name="batch", value=10, preemptible=True, preempt_grace=seconds(30)),
        types_pb2.PriorityClass(
            name="prod", value=100, preemptible=False, in_quota_only=True, min_runtime=seconds(600)
        ),
    ]


def canned_queue() -> list[types_pb2.QueueEntry]:
    """Sent out of serving order on purpose: the table must sort by position."""
    return [
        types_pb2.QueueEntry(
            lease_id="lease-q2",
            project="research",
            priority="batch",
            owner=types_pb2.Owner(user="carol"),
            request=types_pb2.ResourceRequest(memory_bytes=20 * GiB, compute_milli=500, count=2, gang=True),
            position=2,
            reason="research is at its limit",
            waiting_since=stamp(125),
            node="node-a",
        ),
        types_pb2.QueueEntry(
            lease_id="lease-q1",
            project="vision",
            priority="prod",
            owner=types_pb2.Owner(user="alice"),
            request=types_pb2.ResourceRequest(mig_profile="3g.40gb"),
            position=1,
            estimated_wait=seconds(45),
            reason="no free 3g.40gb slot",
            waiting_since=stamp(30),
            suspended=True,
            node="node-b",
        ),
    ]


def project_status(quota: types_pb2.Quota, *, configured: bool = True) -> types_pb2.ProjectStatus:
    held = {"vision": (5000, 300 * GiB, 3), "research": (1000, 0, 1), "adhoc": (500, 10 * GiB, 1)}
    allocated, memory, leases = held.get(quota.project, (0, 0, 0))
    return types_pb2.ProjectStatus(
        quota=quota,
        allocated_milli=allocated,
        allocated_memory_bytes=memory,
        borrowed_milli=max(0, allocated - quota.deserved_milli),
        fair_share_milli=quota.deserved_milli + 1250,
        leases=leases,
        waiting=1 if quota.project in ("vision", "research") else 0,
        configured=configured,
    )


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, reason: str, message: str) -> None:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=reasons.DOMAIN))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


class FairAdmin(FakeAdmin):
    """The fake AdminService of test_vgpuctl_cli plus quotas, the queue and preemption."""

    def __init__(self) -> None:
        super().__init__()
        self.quotas = {"vision": vision_quota(), "research": research_quota()}
        self.unconfigured = {"adhoc"}  # holds a lease, has no quota
        self.set_warnings: list[str] = []
        self.list_warnings: list[str] = []
        self.queue = canned_queue()
        self.grant_rate = 0.5

    def SetQuota(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.SetQuotaRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SetQuotaResponse:
        self._enter(request, context)
        self.quotas[request.quota.project] = request.quota
        return admin_pb2.SetQuotaResponse(project=project_status(request.quota), warnings=self.set_warnings)

    def GetQuota(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.GetQuotaRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetQuotaResponse:
        self._enter(request, context)
        if request.project in self.unconfigured:
            quota = types_pb2.Quota(project=request.project)
            return admin_pb2.GetQuotaResponse(project=project_status(quota, configured=False))
        if request.project not in self.quotas:
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                reasons.PROJECT_NOT_FOUND,
                f"no quota is set for project {request.project}",
            )
        return admin_pb2.GetQuotaResponse(project=project_status(self.quotas[request.project]))

    def ListQuotas(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.ListQuotasRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListQuotasResponse:
        self._enter(request, context)
        projects = [project_status(quota) for quota in self.quotas.values()]
        projects += [project_status(types_pb2.Quota(project=name), configured=False) for name in self.unconfigured]
        return admin_pb2.ListQuotasResponse(
            projects=projects,
            capacity_milli=8000,
            capacity_memory_bytes=640 * GiB,
            priority_classes=canned_classes(),
            warnings=self.list_warnings,
        )

    def DeleteQuota(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.DeleteQuotaRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DeleteQuotaResponse:
        self._enter(request, context)
        if request.project not in self.quotas:
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                reasons.PROJECT_NOT_FOUND,
                f"no quota is set for project {request.project}",
            )
        if request.project == "vision":
            abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                reasons.PROJECT_BUSY,
                "project vision holds 3 leases and 1 queued request",
            )
        del self.quotas[request.project]
        return admin_pb2.DeleteQuotaResponse()

    def ListQueue(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.ListQueueRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListQueueResponse:
        self._enter(request, context)
        if request.project and request.project not in self.quotas and request.project not in self.unconfigured:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, reasons.UNKNOWN_PROJECT, f"no project {request.project}")
        entries = [entry for entry in self.queue if request.project in ("", entry.project)]
        return admin_pb2.ListQueueResponse(entries=entries, grant_rate=self.grant_rate)

    def PreemptLease(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.PreemptLeaseRequest, context: grpc.ServicerContext
    ) -> admin_pb2.PreemptLeaseResponse:
        self._enter(request, context)
        if request.lease_id == NOT_PREEMPTIBLE_LEASE:
            abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                reasons.NOT_PREEMPTIBLE,
                f"priority class prod of lease {request.lease_id} is not preemptible",
            )
        lease = next((lease for lease in canned_leases() if lease.id == request.lease_id), None)
        if lease is None:
            abort(context, grpc.StatusCode.NOT_FOUND, reasons.LEASE_NOT_FOUND, f"no lease {request.lease_id}")
            raise AssertionError("unreachable")  # abort raises
        grace = request.grace.ToNanoseconds() / 1e9 if request.HasField("grace") else 30.0
        deadline = Timestamp()
        deadline.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=grace))
        lease.state = types_pb2.LEASE_STATE_PREEMPTING
        lease.preempt_deadline.CopyFrom(deadline)
        lease.preempt_reason = request.reason
        return admin_pb2.PreemptLeaseResponse(lease=lease)


@dataclass(frozen=True)
class FairDaemon:
    endpoint: str
    admin: FairAdmin

    def sent(self, kind: type[Message]) -> list[Message]:
        """The requests of one type the fake daemon received, in order."""
        return [request for request in self.admin.requests if isinstance(request, kind)]


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[FairDaemon]:
    monkeypatch.delenv("VGPU_ENDPOINT", raising=False)
    # A short directory of our own: pytest's tmp_path can exceed the 107-byte limit of a socket path.
    with tempfile.TemporaryDirectory(prefix="vgpuctl-") as directory:
        endpoint = f"unix://{directory}/vgpud.sock"
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        admin = FairAdmin()  # type: ignore[abstract]  # the usage RPCs are faked in test_vgpuctl_usage
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        server.add_insecure_port(endpoint)
        server.start()
        try:
            yield FairDaemon(endpoint, admin)
        finally:
            admin.release.set()
            server.stop(grace=None).wait()


def run(capsys: pytest.CaptureFixture[str], daemon: FairDaemon, *args: str) -> Outcome:
    code = main(["--endpoint", daemon.endpoint, *args])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def columns(line: str) -> list[str]:
    """A table line split on runs of two or more blanks (cells here may hold single blanks: '4 GPU')."""
    return re.split(r"\s{2,}", line.strip())


# --- quota set ---------------------------------------------------------------------------------------


def test_quota_set_new_project_sends_every_flag_in_api_units(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(
        capsys,
        daemon,
        "quota",
        "set",
        "speech",
        "--deserved",
        "4gpu",
        "--over-quota-weight",
        "2",
        "--limit",
        "8gpu",
        "--deserved-memory",
        "320GiB",
        "--limit-memory",
        "640GiB",
    )
    assert result.code == 0, result.err
    assert daemon.admin.requests == [
        admin_pb2.GetQuotaRequest(project="speech"),
        admin_pb2.SetQuotaRequest(
            quota=types_pb2.Quota(
                project="speech",
                deserved_milli=4000,
                deserved_memory_bytes=320 * GiB,
                over_quota_weight=2,
                limit_milli=8000,
                limit_memory_bytes=640 * GiB,
            )
        ),
    ]
    assert result.out == (
        "quota of project speech created: deserved 4 GPU, 320GiB; limit 8 GPU, 640GiB; over-quota weight 2; "
        "members none (admins only)\n"
    )
    assert result.err == ""


@pytest.mark.parametrize(
    ("given", "milli"),
    [
        ("4gpu", 4000),
        ("0.5gpu", 500),
        ("2.5GPU", 2500),
        ("3 gpus", 3000),
        ("2500m", 2500),
        ("4", 4000),
        ("1.25", 1250),
        (".5", 500),
        ("0", 0),
    ],
)
def test_quota_set_reads_gpu_quantities(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon, given: str, milli: int
) -> None:
    result = run(capsys, daemon, "quota", "set", "speech", "--deserved", given)
    assert result.code == 0, result.err
    (sent,) = daemon.sent(admin_pb2.SetQuotaRequest)
    assert isinstance(sent, admin_pb2.SetQuotaRequest)
    assert sent.quota.deserved_milli == milli


def test_quota_set_new_project_gets_weight_1_and_no_limits(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "quota", "set", "speech", "--deserved", "1")
    assert result.code == 0, result.err
    (sent,) = daemon.sent(admin_pb2.SetQuotaRequest)
    assert sent == admin_pb2.SetQuotaRequest(
        quota=types_pb2.Quota(project="speech", deserved_milli=1000, over_quota_weight=1)
    )
    assert result.out == (
        "quota of project speech created: deserved 1 GPU; limit none; over-quota weight 1; members none (admins only)\n"
    )


def test_quota_set_on_an_existing_project_keeps_the_fields_not_given(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "quota", "set", "vision", "--over-quota-weight", "3", "--limit", "10")
    assert result.code == 0, result.err
    expected = vision_quota()
    expected.over_quota_weight = 3
    expected.limit_milli = 10_000
    assert daemon.admin.requests == [
        admin_pb2.GetQuotaRequest(project="vision"),
        admin_pb2.SetQuotaRequest(quota=expected),
    ]
    assert result.out.startswith("quota of project vision updated: deserved 4 GPU, 320GiB; limit 10 GPU, 640GiB;")


def test_quota_set_clears_a_limit_with_none(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "quota", "set", "vision", "--limit", "none", "--limit-memory", "0")
    assert result.code == 0, result.err
    (sent,) = daemon.sent(admin_pb2.SetQuotaRequest)
    assert isinstance(sent, admin_pb2.SetQuotaRequest)
    assert (sent.quota.limit_milli, sent.quota.limit_memory_bytes) == (0, 0)
    assert (sent.quota.deserved_milli, sent.quota.over_quota_weight) == (4000, 2)


def test_quota_set_on_a_project_listed_only_for_its_leases_starts_from_the_defaults(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "quota", "set", "adhoc", "--deserved", "500m")
    assert result.code == 0, result.err
    (sent,) = daemon.sent(admin_pb2.SetQuotaRequest)
    assert sent == admin_pb2.SetQuotaRequest(
        quota=types_pb2.Quota(project="adhoc", deserved_milli=500, over_quota_weight=1)
    )
    assert "created" in result.out


def test_quota_set_prints_the_daemon_warnings_on_stderr_and_exits_0(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    daemon.admin.set_warnings = [WARNING, "second\nwarning"]
    result = run(capsys, daemon, "quota", "set", "vision", "--deserved", "6gpu")
    assert result.code == 0, result.err
    assert result.out.startswith("quota of project vision updated: deserved 6 GPU")
    assert result.err_lines == [f"warning: {WARNING}", "warning: second warning"]


def test_quota_set_json_has_the_project_and_the_warnings(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    daemon.admin.set_warnings = [WARNING]
    result = run(capsys, daemon, "quota", "set", "vision", "--deserved", "6gpu", "--json")
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert set(answer) == {"project", "warnings"}
    assert answer["warnings"] == [WARNING]
    assert answer["project"]["quota"]["deserved_milli"] == 6000  # uint64 as a JSON number
    assert answer["project"]["quota"]["over_quota_weight"] == 2
    assert answer["project"]["configured"] is True
    assert result.err_lines == [f"warning: {WARNING}"]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--deserved", "4xyz"], "cannot read '4xyz' as GPU capacity"),
        (["--deserved", "-1gpu"], "'-1gpu' is negative"),
        (["--deserved", "320GiB"], "is a memory size, not GPU capacity"),
        (["--deserved", "0.0005gpu"], "finer than 1 milli-GPU"),
        (["--deserved", "2.5m"], "finer than 1 milli-GPU"),
        (["--limit", "lots"], "cannot read 'lots' as GPU capacity"),
        (["--over-quota-weight", "-1"], "the weight must be a number above 0, got '-1'"),
        (["--over-quota-weight", "0"], "set --limit to its --deserved instead"),
        (["--over-quota-weight", "nan"], "the weight must be a number above 0"),
        (["--over-quota-weight", "heavy"], "cannot read 'heavy' as a weight"),
        (["--deserved-memory", "12parsecs"], "unknown memory unit"),
        (["--limit-memory", "-5GiB"], "'-5GiB' is negative"),
        (["--deserved", "4gpu", "--limit", "2gpu"], "the limit 2 GPU is below the deserved 4 GPU; give --limit 4gpu"),
        (
            ["--deserved-memory", "320GiB", "--limit-memory", "100GiB"],
            "the memory limit 100GiB is below the deserved memory 320GiB",
        ),
        ([" "], "the project name is empty"),
    ],
)
def test_quota_set_bad_input_is_one_usage_line_and_asks_nothing(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon, flags: list[str], says: str
) -> None:
    args = ["quota", "set", *flags] if flags == [" "] else ["quota", "set", "speech", *flags]
    result = run(capsys, daemon, *args)
    assert result.code == 2
    assert result.out == ""
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("vgpuctl: error: ")
    assert says in result.err
    assert "Traceback" not in result.err
    assert daemon.admin.requests == []


def test_quota_set_limit_below_the_kept_deserved_is_refused_before_setting(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "quota", "set", "vision", "--limit", "2gpu")
    assert result.code == 2
    assert result.err_lines == [
        "vgpuctl: error: the limit 2 GPU is below the deserved 4 GPU (current); give --limit 4gpu or more "
        "(none: no limit), or a lower --deserved"
    ]
    assert daemon.sent(admin_pb2.SetQuotaRequest) == []


def test_quota_set_refused_by_the_daemon(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    daemon.admin.refusal = Refusal(grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_REQUEST, "bad project name")
    result = run(capsys, daemon, "quota", "set", "Vision!", "--deserved", "1")
    assert result.code == 2
    assert result.err_lines == ["vgpuctl: error: INVALID_REQUEST: bad project name"]


def test_quota_set_help_says_fields_not_given_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quota", "set", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "only the flags given change, the rest is kept" in out
    assert "over-quota weight 1, no limits" in out


# --- quota get / list / delete -----------------------------------------------------------------------


def test_quota_get_shows_quota_and_use(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "quota", "get", "vision")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "project:            vision",
        "deserved:           4 GPU, 320GiB",
        "limit:              8 GPU, 640GiB",
        "over-quota weight:  2",
        "members:            none: only admins may acquire in it",
        "allocated:          5 GPU, 300GiB",
        "borrowed:           1 GPU",
        "fair share:         5.25 GPU",
        "leases:             3",
        "waiting:            1",
    ]
    assert daemon.admin.requests == [admin_pb2.GetQuotaRequest(project="vision")]


def test_quota_get_of_a_project_without_quota_says_so(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "quota", "get", "adhoc")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[1].startswith("quota:")
    assert "none set" in lines[1]
    assert "vgpuctl quota set adhoc" in lines[1]
    assert not any(line.startswith(("deserved:", "limit:")) for line in lines)


def test_quota_get_json_keys(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "quota", "get", "research", "--json")
    assert result.code == 0, result.err
    status = json.loads(result.out)
    assert set(status) == {
        "quota",
        "allocated_milli",
        "allocated_memory_bytes",
        "borrowed_milli",
        "fair_share_milli",
        "leases",
        "waiting",
        "configured",
    }
    assert set(status["quota"]) == {
        "project",
        "deserved_milli",
        "deserved_memory_bytes",
        "over_quota_weight",
        "limit_milli",
        "limit_memory_bytes",
        "members",
    }
    assert status["quota"]["deserved_milli"] == 2500
    assert status["quota"]["limit_milli"] == 0


def test_quota_get_unknown_project_exits_3_with_one_line(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "quota", "get", "nope")
    assert result.code == 3
    assert result.out == ""
    assert result.err_lines == [
        "vgpuctl: error: PROJECT_NOT_FOUND: no quota is set for project nope; `vgpuctl quota list` shows the "
        "projects; `vgpuctl quota set nope --deserved N` creates a quota"
    ]


def test_quota_list_table_pool_and_priority_classes(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    daemon.admin.list_warnings = [WARNING]
    result = run(capsys, daemon, "quota", "list")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert "\x1b[" not in result.out
    assert columns(lines[0]) == [
        "PROJECT",
        "DESERVED",
        "ALLOCATED",
        "BORROWED",
        "FAIR SHARE",
        "LIMIT",
        "WEIGHT",
        "LEASES",
        "WAITING",
    ]
    # Sorted by name; the project without a quota shows '-' in its quota cells.
    assert columns(lines[1]) == ["adhoc", "-", "0.5 GPU, 10GiB", "0.5 GPU", "1.25 GPU", "-", "-", "1", "0"]
    assert columns(lines[2]) == ["research", "2.5 GPU", "1 GPU", "0 GPU", "3.75 GPU", "none", "1", "1", "1"]
    assert columns(lines[3]) == [
        "vision",
        "4 GPU, 320GiB",
        "5 GPU, 300GiB",
        "1 GPU",
        "5.25 GPU",
        "8 GPU, 640GiB",
        "2",
        "3",
        "1",
    ]
    assert lines[4] == "-: no quota set; the project only borrows idle GPUs"
    assert lines[5] == ""
    assert lines[6] == "pool capacity: 8 GPU, 640GiB; deserved quotas add up to 6.5 GPU (81% of the pool)"
    assert lines[7] == ""
    assert columns(lines[8]) == ["PRIORITY CLASS", "VALUE", "PREEMPTIBLE", "IN QUOTA ONLY", "GRACE", "MIN RUNTIME"]
    assert columns(lines[9]) == ["prod", "100", "no", "yes", "-", "10m"]  # highest value first
    assert columns(lines[10]) == ["batch", "10", "yes", "no", "30s", "-"]
    assert len(lines) == 11
    assert all(line == line.rstrip() for line in lines)
    assert result.err_lines == [f"warning: {WARNING}"]


def test_quota_list_json_keys(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    daemon.admin.list_warnings = [WARNING]
    result = run(capsys, daemon, "quota", "list", "--json")
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert set(answer) == {"projects", "capacity_milli", "capacity_memory_bytes", "priority_classes", "warnings"}
    assert answer["capacity_milli"] == 8000
    assert {project["quota"]["project"] for project in answer["projects"]} == {"vision", "research", "adhoc"}
    assert answer["priority_classes"][0]["name"] == "batch"
    assert answer["priority_classes"][0]["preempt_grace"] == "30s"
    assert answer["warnings"] == [WARNING]
    assert result.err_lines == [f"warning: {WARNING}"]


def test_quota_list_without_projects_still_shows_the_pool(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    daemon.admin.quotas.clear()
    daemon.admin.unconfigured.clear()
    result = run(capsys, daemon, "quota", "list")
    assert result.code == 0, result.err
    assert result.err == "No projects found.\n"
    pool = "pool capacity: 8 GPU, 640GiB; deserved quotas add up to 0 GPU (0% of the pool)"
    assert result.out.splitlines() == [pool, "", *result.out.splitlines()[2:]]
    assert result.out.splitlines()[2].startswith("PRIORITY CLASS")


def test_quota_delete(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "quota", "delete", "research")
    assert result.code == 0, result.err
    assert result.out == "quota of project research deleted\n"
    assert daemon.admin.requests == [admin_pb2.DeleteQuotaRequest(project="research")]
    assert "research" not in daemon.admin.quotas


def test_quota_delete_of_a_busy_project_is_refused_with_where_to_look(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "quota", "delete", "vision")
    assert result.code == 1
    assert result.out == ""
    assert len(result.err_lines) == 1
    line = result.err_lines[0]
    assert line.startswith("vgpuctl: error: PROJECT_BUSY: project vision holds 3 leases and 1 queued request; ")
    assert "`vgpuctl leases --project vision`" in line
    assert "`vgpuctl queue --project vision`" in line


def test_quota_delete_unknown_project_exits_3(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "quota", "delete", "nope")
    assert result.code == 3
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith("vgpuctl: error: PROJECT_NOT_FOUND: no quota is set for project nope")


def test_quota_without_a_verb_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quota"]) == 2
    out = capsys.readouterr().out
    for verb in ("set", "get", "list", "delete"):
        assert verb in out


# --- queue -------------------------------------------------------------------------------------------


def test_queue_table_in_serving_order(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "queue")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert columns(lines[0]) == [
        "POS",
        "LEASE",
        "PROJECT",
        "PRIORITY",
        "STATE",
        "SHAPE",
        "WAITING",
        "EST. WAIT",
        "WHY",
    ]
    first, second = columns(lines[1]), columns(lines[2])
    waited = [first.pop(6), second.pop(6)]  # WAITING: an age, read apart in case the clock ticked
    assert first == ["1", "lease-q1", "vision", "prod", "suspended", "3g.40gb", "~45s", "no free 3g.40gb slot"]
    assert second == [
        "2",
        "lease-q2",
        "research",
        "batch",
        "pending",
        "20GiB/0.5 x2 gang",
        "-",
        "research is at its limit",
    ]
    assert waited[0] in {"30s", "31s"}
    assert waited[1] == "2m"
    assert lines[3] == ""
    assert lines[4] == "grant rate: 0.5/s (30/min), what the estimated waits derive from"
    assert len(lines) == 5
    assert result.err == ""


def test_queue_project_filter_is_sent(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "queue", "--project", "research")
    assert result.code == 0, result.err
    assert daemon.admin.requests == [admin_pb2.ListQueueRequest(project="research")]
    assert [columns(line)[1] for line in result.out.splitlines()[1:2]] == ["lease-q2"]


def test_queue_json_keys(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "queue", "--json")
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert set(answer) == {"entries", "grant_rate"}
    assert answer["grant_rate"] == 0.5
    first = answer["entries"][1]
    assert first["lease_id"] == "lease-q1"
    assert first["suspended"] is True
    assert first["estimated_wait"] == "45s"
    assert first["position"] == 1
    assert first["owner"]["user"] == "alice"
    assert first["node"] == "node-b"
    assert {"priority", "request", "reason", "waiting_since", "project"} <= set(first)


def test_queue_empty_says_so_on_stderr(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    daemon.admin.queue = []
    result = run(capsys, daemon, "queue")
    assert result.code == 0
    assert result.out == ""
    assert result.err == "No waiting requests found.\n"


def test_queue_without_recent_grants_says_waits_cannot_be_estimated(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    daemon.admin.grant_rate = 0.0
    result = run(capsys, daemon, "queue")
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1] == "grant rate: 0/s (nothing granted lately, so waits cannot be estimated)"


def test_queue_of_an_unknown_project_exits_3_with_a_hint(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "queue", "--project", "nope")
    assert result.code == 3  # UNKNOWN_PROJECT reads as not found, though sent as INVALID_ARGUMENT
    assert result.err_lines == [
        "vgpuctl: error: UNKNOWN_PROJECT: no project nope; `vgpuctl quota list` shows the projects; "
        "`vgpuctl quota set nope --deserved N` creates a quota"
    ]


# --- preempt -----------------------------------------------------------------------------------------


def test_preempt_sends_grace_and_reason_and_prints_state_and_deadline(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "preempt", "lease-aaa", "--reason", "make room for prod", "--grace", "45s")
    assert result.code == 0, result.err
    assert daemon.admin.requests == [
        admin_pb2.PreemptLeaseRequest(lease_id="lease-aaa", reason="make room for prod", grace=Duration(seconds=45))
    ]
    assert re.fullmatch(
        r"lease lease-aaa: preempting; it must checkpoint and yield by "
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in 4\ds\)\n",
        result.out,
    ), result.out
    assert result.err == ""


@pytest.mark.parametrize(
    ("given", "nanos"),
    [
        ("30s", 30 * 10**9),
        ("2m", 120 * 10**9),
        ("1m30s", 90 * 10**9),
        ("1h", 3600 * 10**9),
        ("90", 90 * 10**9),
        ("1.5", 1_500_000_000),
        ("500ms", 500_000_000),
    ],
)
def test_preempt_reads_durations(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon, given: str, nanos: int
) -> None:
    result = run(capsys, daemon, "preempt", "lease-aaa", "--grace", given)
    assert result.code == 0, result.err
    (sent,) = daemon.sent(admin_pb2.PreemptLeaseRequest)
    assert isinstance(sent, admin_pb2.PreemptLeaseRequest)
    assert sent.grace.ToNanoseconds() == nanos


def test_preempt_without_grace_leaves_it_to_the_priority_class(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "preempt", "lease-aaa")
    assert result.code == 0, result.err
    (sent,) = daemon.sent(admin_pb2.PreemptLeaseRequest)
    assert isinstance(sent, admin_pb2.PreemptLeaseRequest)
    assert not sent.HasField("grace")
    assert "(in 30s)" in result.out or "(in 29" in result.out


@pytest.mark.parametrize(
    ("grace", "says"),
    [("soon", "cannot read 'soon' as a duration"), ("-5s", "is negative"), ("0", "must be above 0"), ("5x", "5x")],
)
def test_preempt_bad_grace_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon, grace: str, says: str
) -> None:
    result = run(capsys, daemon, "preempt", "lease-aaa", "--grace", grace)
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert "--grace" in result.err
    assert says in result.err
    assert daemon.admin.requests == []


def test_preempt_json_is_the_lease(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "preempt", "lease-aaa", "--reason", "room", "--json")
    assert result.code == 0, result.err
    lease = json.loads(result.out)
    assert lease["id"] == "lease-aaa"
    assert lease["state"] == "LEASE_STATE_PREEMPTING"
    assert lease["preempt_reason"] == "room"
    assert lease["preempt_deadline"].endswith("Z")
    assert {"steps", "preemptions", "preempt_reason", "preempt_deadline"} <= set(lease)
    assert lease["preemptions"] == 0


def test_preempt_of_a_non_preemptible_lease_names_it_and_the_way_out(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "preempt", NOT_PREEMPTIBLE_LEASE)
    assert result.code == 1
    assert result.out == ""
    assert result.err_lines == [
        f"vgpuctl: error: NOT_PREEMPTIBLE: priority class prod of lease {NOT_PREEMPTIBLE_LEASE} is not preemptible; "
        f"lease {NOT_PREEMPTIBLE_LEASE} is of a non-preemptible priority class; "
        f"`vgpuctl evict {NOT_PREEMPTIBLE_LEASE}` revokes it at once, without a checkpoint"
    ]


def test_preempt_unknown_lease_exits_3(capsys: pytest.CaptureFixture[str], daemon: FairDaemon) -> None:
    result = run(capsys, daemon, "preempt", "lease-zzz")
    assert result.code == 3
    assert result.err_lines == ["vgpuctl: error: LEASE_NOT_FOUND: no lease lease-zzz"]


# --- every new verb ----------------------------------------------------------------------------------

NEW_VERBS = [
    ("quota", "set", "vision", "--deserved", "4"),
    ("quota", "get", "vision"),
    ("quota", "list"),
    ("quota", "delete", "research"),
    ("queue",),
    ("preempt", "lease-aaa"),
]


@pytest.mark.parametrize("verb", NEW_VERBS, ids=" ".join)
def test_new_verbs_carry_the_deadline(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon, verb: tuple[str, ...]
) -> None:
    result = run(capsys, daemon, "--timeout", "3", *verb)
    assert result.code == 0, result.err
    assert daemon.admin.time_remaining
    for remaining in daemon.admin.time_remaining:
        assert remaining is not None
        assert 1 < remaining <= 3.5


@pytest.mark.parametrize("verb", NEW_VERBS, ids=" ".join)
def test_new_verbs_with_the_daemon_unreachable_exit_4_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, verb: tuple[str, ...]
) -> None:
    monkeypatch.delenv("VGPU_ENDPOINT", raising=False)
    with tempfile.TemporaryDirectory(prefix="vgpuctl-") as directory:
        endpoint = f"unix://{directory}/missing.sock"
        code = main(["--endpoint", endpoint, *verb])
    captured = capsys.readouterr()
    assert code == 4
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith(f"vgpuctl: error: cannot reach vgpud at {endpoint}")


def test_quota_set_members_replaces_the_list_and_checks_each_entry(
    capsys: pytest.CaptureFixture[str], daemon: FairDaemon
) -> None:
    result = run(capsys, daemon, "quota", "set", "speech", "--members", "user:alice, group:ml")
    assert result.code == 0, result.err
    (sent,) = daemon.sent(admin_pb2.SetQuotaRequest)
    assert isinstance(sent, admin_pb2.SetQuotaRequest)
    assert list(sent.quota.members) == ["user:alice", "group:ml"]
    assert result.out.rstrip().endswith("members user:alice, group:ml")
    bad = run(capsys, daemon, "quota", "set", "speech", "--members", "alice")
    assert bad.code == 2
    assert bad.err == "vgpuctl: error: --members entry 'alice' is not user:NAME or group:NAME\n"

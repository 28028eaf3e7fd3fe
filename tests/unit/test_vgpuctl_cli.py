"""vgpuctl end to end against a real in-process gRPC server holding a fake AdminService."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]  # no stubs ship
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from vgpuctl._private.app import main

GiB = 1024**3
H100_BYTES = int(79.6 * GiB)
UUID_A0 = "GPU-1a2b3c4d-0000-4000-8000-000000000001"
UUID_A1 = "GPU-1a2b9999-0000-4000-8000-000000000002"
UUID_B0 = "GPU-5e6f7a8b-0000-4000-8000-000000000003"
UUID_C0 = "GPU-9c0d1e2f-0000-4000-8000-000000000004"
MIG_READY = "MIG-11111111-0000-4000-8000-00000000000a"
MIG_WARM = "MIG-22222222-0000-4000-8000-00000000000b"
MIG_FOREIGN = "MIG-33333333-0000-4000-8000-00000000000c"


def stamp(seconds_ago: float) -> Timestamp:
    when = Timestamp()
    when.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago))
    return when


def canned_nodes() -> list[types_pb2.Node]:
    return [
        types_pb2.Node(
            name="node-b",
            state=types_pb2.NODE_STATE_DRAINING,
            draining=True,
            endpoint="unix:///run/vgpu/vgpud.sock",
            gpu_count=1,
            version="0.1.0",
            backend="sim",
            started_at=stamp(3600),
        ),
        types_pb2.Node(
            name="node-a",
            state=types_pb2.NODE_STATE_READY,
            endpoint="unix:///run/vgpu/vgpud.sock",
            tcp_endpoint="10.0.0.1:7443",
            gpu_count=2,
            version="0.1.0",
            backend="nvml",
            started_at=stamp(86_400 * 3),
        ),
        # A node whose daemon is gone: only its name, state and registered GPUs are known.
        types_pb2.Node(name="node-c", state=types_pb2.NODE_STATE_DOWN, gpu_count=1),
    ]


def canned_gpus() -> list[types_pb2.Gpu]:
    return [
        types_pb2.Gpu(
            uuid=UUID_B0,
            node="node-b",
            index=0,
            model="a100-40gb",
            memory_bytes=40 * GiB,
            mode=types_pb2.GPU_MODE_EXCLUSIVE,
            healthy=False,
            mig_memory_slices=8,
        ),
        types_pb2.Gpu(
            uuid=UUID_A0,
            node="node-a",
            index=0,
            model="h100-80gb",
            memory_bytes=H100_BYTES,
            mode=types_pb2.GPU_MODE_SHARED,
            healthy=True,
            allocated=types_pb2.GpuAllocation(memory_bytes=20 * GiB, compute_milli=500, slices=1),
            mig_memory_slices=8,
        ),
        types_pb2.Gpu(
            uuid=UUID_A1,
            node="node-a",
            index=1,
            model="h100-80gb",
            memory_bytes=H100_BYTES,
            mode=types_pb2.GPU_MODE_MIG,
            healthy=True,
            mig_memory_slices=8,
            mig_instances=canned_mig_instances(),
            # Free: slices 5 and 7; a 1g starts at 0..6, so one fits (at 5), and the one 1g+me allowed.
            mig_fits=[
                types_pb2.MigFit(profile="1g.10gb", more=1),
                types_pb2.MigFit(profile="1g.10gb+me", more=1),
            ],
        ),
        types_pb2.Gpu(
            uuid=UUID_C0,
            node="node-c",
            index=0,
            model="h100-80gb",
            memory_bytes=H100_BYTES,
            mode=types_pb2.GPU_MODE_SHARED,
            healthy=False,  # vgpud reports the GPUs of a down node as not healthy
            allocated=types_pb2.GpuAllocation(memory_bytes=10 * GiB, compute_milli=250, slices=1),
            mig_memory_slices=8,
        ),
    ]


def canned_mig_instances() -> list[types_pb2.MigInstance]:
    """UUID_A1's instances: a leased 3g over slices 0-3, a warm 1g at 4, a hand-made 1g at 6."""
    return [
        types_pb2.MigInstance(
            profile="3g.40gb",
            start=0,
            size=4,
            uuid=MIG_READY,
            lease_id="lease-mig",
            state=types_pb2.MIG_INSTANCE_STATE_READY,
        ),
        types_pb2.MigInstance(
            profile="1g.10gb", start=4, size=1, uuid=MIG_WARM, state=types_pb2.MIG_INSTANCE_STATE_WARM
        ),
        types_pb2.MigInstance(
            profile="1g.10gb", start=6, size=1, uuid=MIG_FOREIGN, state=types_pb2.MIG_INSTANCE_STATE_FOREIGN
        ),
    ]


def plan_step(action: str, uuid: str, profile: str, start: int, blocked_by: str = "") -> admin_pb2.MigPlanStep:
    return admin_pb2.MigPlanStep(
        action=admin_pb2.MigPlanStep.Action.Value(f"ACTION_{action.upper()}"),
        node="node-a",
        gpu_uuid=uuid,
        profile=profile,
        start=start,
        blocked_by=blocked_by,
    )


def canned_plan() -> admin_pb2.PlanMigLayoutResponse:
    """What PlanMigLayout answers: UUID_A1's leased 3g is in the way, UUID_A0 is not in MIG mode yet."""
    waits = "waits for 3g.40gb@0: lease lease-mig"
    return admin_pb2.PlanMigLayoutResponse(
        steps=[
            plan_step("destroy", UUID_A1, "3g.40gb", 0, "lease lease-mig"),
            plan_step("destroy", UUID_A1, "1g.10gb", 4, waits),
            plan_step("create", UUID_A1, "4g.40gb", 0, waits),
            plan_step("keep", UUID_A1, "1g.10gb", 6),
            plan_step("create", UUID_A0, "7g.80gb", 0, f"GPU not in MIG mode: vgpuctl gpu mode {UUID_A0} mig"),
        ]
    )


def canned_leases() -> list[types_pb2.Lease]:
    return [
        types_pb2.Lease(
            id="lease-aaa",
            state=types_pb2.LEASE_STATE_GRANTED,
            project="research",
            owner=types_pb2.Owner(user="alice", host="host1", pid=4242),
            slices=[
                types_pb2.Slice(
                    node="node-a",
                    gpu_uuid=UUID_A0,
                    isolation=types_pb2.ISOLATION_SHARED,
                    memory_bytes=20 * GiB,
                    compute_milli=500,
                )
            ],
            created_at=stamp(90),
            node="node-a",
        ),
        types_pb2.Lease(
            id="lease-bbb",
            state=types_pb2.LEASE_STATE_REVOKED,
            project="vision",
            owner=types_pb2.Owner(user="bob", host="host2", pid=7),
            created_at=stamp(7200),
            ended_at=stamp(60),
            node="node-b",
            end_reason=reasons.END_EVICTED,
        ),
        types_pb2.Lease(
            id="lease-ccc",
            state=types_pb2.LEASE_STATE_GRANTED,
            project="research",
            owner=types_pb2.Owner(user="carol"),
            slices=[
                types_pb2.Slice(
                    node=node,
                    gpu_uuid=uuid,
                    isolation=types_pb2.ISOLATION_SHARED,
                    memory_bytes=10 * GiB,
                    compute_milli=250,
                )
                for node, uuid in (("node-c", UUID_C0), ("node-b", UUID_B0))
            ],
            created_at=stamp(65),
            node="node-a",  # granted through node-a's daemon; its slices are on node-b and node-c
        ),
    ]


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    reason: str
    message: str


class FakeAdmin(admin_pb2_grpc.AdminServiceServicer):
    """Canned answers; records each request and the deadline it arrived with."""

    def __init__(self) -> None:
        self.requests: list[Message] = []
        self.time_remaining: list[float | None] = []
        self.refusal: Refusal | None = None
        self.plain_failure: tuple[grpc.StatusCode, str] | None = None
        self.hang = False
        self.release = threading.Event()
        self.gpus = canned_gpus()
        self.plan = canned_plan()
        self.mode_pending = False

    def _enter(self, request: Message, context: grpc.ServicerContext) -> None:
        self.requests.append(request)
        self.time_remaining.append(context.time_remaining())
        if self.hang:
            self.release.wait(30)
        if self.refusal is not None:
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason=self.refusal.reason, domain=reasons.DOMAIN))
            status = status_pb2.Status(code=self.refusal.code.value[0], message=self.refusal.message, details=[detail])
            context.abort_with_status(rpc_status.to_status(status))
        if self.plain_failure is not None:
            context.abort(*self.plain_failure)

    def ListNodes(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.ListNodesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListNodesResponse:
        self._enter(request, context)
        return admin_pb2.ListNodesResponse(nodes=canned_nodes())

    def ListGpus(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.ListGpusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListGpusResponse:
        self._enter(request, context)
        return admin_pb2.ListGpusResponse(gpus=[gpu for gpu in self.gpus if request.node in ("", gpu.node)])

    def ListAllLeases(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.ListAllLeasesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListAllLeasesResponse:
        self._enter(request, context)
        ended = (types_pb2.LEASE_STATE_RELEASED, types_pb2.LEASE_STATE_REVOKED, types_pb2.LEASE_STATE_EXPIRED)
        return admin_pb2.ListAllLeasesResponse(
            leases=[
                lease
                for lease in canned_leases()
                if (request.include_ended or lease.state not in ended)
                and request.node in ("", lease.node)
                and request.project in ("", lease.project)
            ]
        )

    def EvictLease(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.EvictLeaseRequest, context: grpc.ServicerContext
    ) -> admin_pb2.EvictLeaseResponse:
        self._enter(request, context)
        lease = canned_leases()[0]
        lease.state = types_pb2.LEASE_STATE_REVOKED
        lease.end_reason = reasons.END_EVICTED
        lease.end_message = request.reason
        return admin_pb2.EvictLeaseResponse(lease=lease)

    def SetGpuMode(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.SetGpuModeRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SetGpuModeResponse:
        self._enter(request, context)
        gpu = next(gpu for gpu in canned_gpus() if gpu.uuid == request.gpu_uuid)
        gpu.mode = request.mode
        gpu.mode_pending = self.mode_pending
        return admin_pb2.SetGpuModeResponse(gpu=gpu)

    def DrainNode(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.DrainNodeRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DrainNodeResponse:
        self._enter(request, context)
        node = next(node for node in canned_nodes() if node.name == request.node)
        node.draining = not request.undrain
        node.state = types_pb2.NODE_STATE_READY if request.undrain else types_pb2.NODE_STATE_DRAINING
        return admin_pb2.DrainNodeResponse(node=node)

    def PlanMigLayout(  # noqa: N802 -- servicer method names come from the .proto
        self, request: admin_pb2.PlanMigLayoutRequest, context: grpc.ServicerContext
    ) -> admin_pb2.PlanMigLayoutResponse:
        self._enter(request, context)
        return self.plan


@dataclass(frozen=True)
class Daemon:
    endpoint: str
    admin: FakeAdmin
    health: health.HealthServicer


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    monkeypatch.delenv("VGPU_ENDPOINT", raising=False)
    # A short directory of our own: pytest's tmp_path can exceed the 107-byte limit of a socket path.
    with tempfile.TemporaryDirectory(prefix="vgpuctl-") as directory:
        endpoint = f"unix://{directory}/vgpud.sock"
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        # The stubs mark the fair-share RPCs abstract; at run time the base answers UNIMPLEMENTED for them, and
        # test_vgpuctl_fairshare fakes them.
        admin = FakeAdmin()  # type: ignore[abstract]
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        server.add_insecure_port(endpoint)
        server.start()
        try:
            yield Daemon(endpoint, admin, health_servicer)
        finally:
            admin.release.set()
            server.stop(grace=None).wait()


def run(capsys: pytest.CaptureFixture[str], daemon: Daemon, *args: str) -> Outcome:
    code = main(["--endpoint", daemon.endpoint, *args])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def table(out: str) -> list[list[str]]:
    """The table's rows split into words (only for tables whose cells hold no spaces)."""
    return [line.split() for line in out.splitlines()]


# --- reads -------------------------------------------------------------------------------------------


def test_nodes_table_lists_every_node_sorted_as_plain_text(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "nodes")
    assert result.code == 0, result.err
    assert result.err == ""
    assert "\x1b[" not in result.out
    lines = result.out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "GPUS", "BACKEND", "ENDPOINT", "TCP", "VERSION", "UP", "SINCE"]
    sock = "unix:///run/vgpu/vgpud.sock"
    assert lines[1].split()[:7] == ["node-a", "ready", "2", "nvml", sock, "10.0.0.1:7443", "0.1.0"]
    assert lines[2].split()[:7] == ["node-b", "draining", "1", "sim", sock, "-", "0.1.0"]
    assert lines[3].split() == ["node-c", "down", "1", "-", "-", "-", "-", "-"]
    assert lines[1].split()[7].endswith("Z")
    assert all(line == line.rstrip() for line in lines)


def test_nodes_json_is_a_list_with_proto_field_names(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "nodes", "--json")
    assert result.code == 0, result.err
    nodes = json.loads(result.out)
    assert [node["name"] for node in nodes] == ["node-a", "node-b", "node-c"]
    assert nodes[0]["state"] == "NODE_STATE_READY"
    assert nodes[2]["state"] == "NODE_STATE_DOWN"
    assert nodes[2]["gpu_count"] == 1
    assert nodes[0]["gpu_count"] == 2
    assert nodes[1]["draining"] is True
    assert "started_at" in nodes[0]


def test_gpus_table_shortens_uuids_and_shows_allocation(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "gpus")
    assert result.code == 0, result.err
    rows = table(result.out)
    assert rows[0] == ["NODE", "IDX", "UUID", "MODEL", "MODE", "MIG", "MEMORY", "COMPUTE", "LEASES", "HEALTH"]
    assert rows[1] == [
        "node-a",
        "0",
        "GPU-1a2b3c4d…",
        "h100-80gb",
        "shared",
        "-",
        "20GiB/79.6GiB",
        "0.5/1",
        "1",
        "ok",
    ]
    assert rows[2] == ["node-a", "1", "GPU-1a2b9999…", "h100-80gb", "mig", "6/8", "0/79.6GiB", "0/1", "0", "ok"]
    assert rows[3] == [
        "node-b",
        "0",
        "GPU-5e6f7a8b…",
        "a100-40gb",
        "exclusive",
        "-",
        "0/40GiB",
        "0/1",
        "0",
        "unhealthy",
    ]
    assert rows[4] == [
        "node-c",
        "0",
        "GPU-9c0d1e2f…",
        "h100-80gb",
        "shared",
        "-",
        "10GiB/79.6GiB",
        "0.25/1",
        "1",
        "node-down",
    ]
    assert len(rows) == 5
    assert UUID_A0 not in result.out
    assert daemon.admin.requests == [admin_pb2.ListGpusRequest(), admin_pb2.ListNodesRequest()]


def test_gpus_table_marks_a_pending_mode_and_counts_mig_slots_once(
    capsys: pytest.CaptureFixture[str], daemon: Daemon
) -> None:
    mig_gpu = daemon.admin.gpus[2]
    assert mig_gpu.uuid == UUID_A1
    mig_gpu.mode_pending = True
    mig_gpu.mig_instances.add(profile="7g.80gb", start=0, size=8)  # overlaps the others: 8 slices, not 14
    daemon.admin.gpus[1].mode_pending = True
    rows = table(run(capsys, daemon, "gpus").out)
    assert rows[1][4:6] == ["shared(pending)", "-"]
    assert rows[2][4:6] == ["mig(pending)", "8/8"]


def test_gpus_json_keeps_full_uuids(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "gpus", "--json")
    assert result.code == 0, result.err
    gpus = json.loads(result.out)
    assert {gpu["uuid"] for gpu in gpus} == {UUID_A0, UUID_A1, UUID_B0, UUID_C0}
    assert [gpu["node"] for gpu in gpus] == ["node-a", "node-a", "node-b", "node-c"]
    first = gpus[0]
    assert first["uuid"] == UUID_A0
    assert first["allocated"] == {"memory_bytes": 20 * GiB, "compute_milli": 500, "slices": 1}
    assert first["memory_bytes"] == H100_BYTES  # uint64: a JSON number, not protobuf's string
    assert gpus[-1]["healthy"] is False
    assert daemon.admin.requests == [admin_pb2.ListGpusRequest()]  # JSON is the daemon's answer, no join


def test_gpus_node_filter_is_sent_to_the_daemon(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "gpus", "--node", "node-b")
    assert result.code == 0, result.err
    assert daemon.admin.requests == [admin_pb2.ListGpusRequest(node="node-b"), admin_pb2.ListNodesRequest()]
    rows = table(result.out)
    assert len(rows) == 2
    assert rows[1][0] == "node-b"


def test_leases_table_shows_owner_slices_and_age(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "leases")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "PROJECT", "OWNER", "SLICES", "AGE", "NODES"]
    assert lines[1].split() == [
        "lease-aaa",
        "granted",
        "research",
        "alice@host1:4242",
        "GPU-1a2b3c4d…",
        "20GiB/0.5",
        "1m",
        "node-a",
    ]
    assert lines[2].split() == [
        "lease-ccc",
        "granted",
        "research",
        "carol",
        "GPU-9c0d1e2f…",
        "10GiB/0.25,",
        "GPU-5e6f7a8b…",
        "10GiB/0.25",
        "1m",
        "node-b,node-c",  # where its slices are, not the granting node-a
    ]
    assert len(lines) == 3
    assert daemon.admin.requests == [admin_pb2.ListAllLeasesRequest()]


def test_leases_all_adds_ended_leases_and_their_end_reason(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "leases", "--all", "--project", "vision", "--node", "node-b")
    assert result.code == 0, result.err
    assert daemon.admin.requests == [
        admin_pb2.ListAllLeasesRequest(node="node-b", project="vision", include_ended=True)
    ]
    lines = result.out.splitlines()
    assert lines[0].split()[-2:] == ["END", "REASON"]
    assert lines[1].split() == [
        "lease-bbb",
        "revoked",
        "vision",
        "bob@host2:7",
        "-",
        "2h",
        "node-b",
        "EVICTED_BY_ADMIN",
    ]


def test_leases_json(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "leases", "--all", "--json")
    assert result.code == 0, result.err
    leases = json.loads(result.out)
    assert [lease["id"] for lease in leases] == ["lease-bbb", "lease-aaa", "lease-ccc"]
    assert leases[1]["slices"][0]["gpu_uuid"] == UUID_A0
    assert leases[2]["node"] == "node-a"
    assert [piece["node"] for piece in leases[2]["slices"]] == ["node-c", "node-b"]
    assert leases[0]["end_reason"] == reasons.END_EVICTED


def test_empty_list_says_so_on_stderr_and_keeps_stdout_empty(
    capsys: pytest.CaptureFixture[str], daemon: Daemon
) -> None:
    result = run(capsys, daemon, "leases", "--project", "nobody")
    assert result.code == 0
    assert result.out == ""
    assert result.err == "No leases found.\n"
    as_json = run(capsys, daemon, "leases", "--project", "nobody", "--json")
    assert json.loads(as_json.out) == []


def test_endpoint_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VGPU_ENDPOINT", daemon.endpoint)
    assert main(["nodes"]) == 0
    assert "node-a" in capsys.readouterr().out


def test_health_serving_and_not_serving(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "health")
    assert (result.code, result.out) == (0, "SERVING\n")
    daemon.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = run(capsys, daemon, "health", "--json")
    assert result.code == 1
    assert json.loads(result.out)["status"] == "NOT_SERVING"


# --- writes ------------------------------------------------------------------------------------------


def test_evict_prints_one_line_and_sends_the_reason(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "evict", "lease-aaa", "--reason", "maintenance")
    assert (result.code, result.out, result.err) == (0, "evicted lease-aaa\n", "")
    assert daemon.admin.requests == [admin_pb2.EvictLeaseRequest(lease_id="lease-aaa", reason="maintenance")]


def test_evict_json(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "evict", "lease-aaa", "--json")
    assert result.code == 0
    lease = json.loads(result.out)
    assert lease["id"] == "lease-aaa"
    assert lease["state"] == "LEASE_STATE_REVOKED"


@pytest.mark.parametrize(
    ("args", "undrain", "line"),
    [
        ((), False, "node node-a: draining\n"),
        (("--undo",), True, "node node-a: ready\n"),
    ],
)
def test_drain_and_undo_print_the_new_state(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, args: tuple[str, ...], undrain: bool, line: str
) -> None:
    result = run(capsys, daemon, "drain", "node-a", *args)
    assert (result.code, result.out) == (0, line)
    assert daemon.admin.requests == [admin_pb2.DrainNodeRequest(node="node-a", undrain=undrain)]


def test_gpu_mode_with_a_full_uuid_goes_straight_to_the_daemon(
    capsys: pytest.CaptureFixture[str], daemon: Daemon
) -> None:
    result = run(capsys, daemon, "gpu", "mode", UUID_A1, "exclusive")
    assert result.code == 0, result.err
    assert daemon.admin.requests == [admin_pb2.SetGpuModeRequest(gpu_uuid=UUID_A1, mode=types_pb2.GPU_MODE_EXCLUSIVE)]
    assert result.out == f"GPU {UUID_A1} (node node-a, index 1): mode exclusive\n"


def test_gpu_mode_says_when_the_hardware_switch_is_pending(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    daemon.admin.mode_pending = True
    result = run(capsys, daemon, "gpu", "mode", UUID_A0, "mig")
    assert result.code == 0, result.err
    assert result.out == (
        f"GPU {UUID_A0} (node node-a, index 0): mode mig (pending: the node daemon switches the hardware next)\n"
    )


@pytest.mark.parametrize("given", ["GPU-1a2b3c4d…", "gpu-1a2b3c", "1a2b3c4d", "GPU-1a2b3c4d..."])
def test_gpu_mode_accepts_a_unique_prefix(capsys: pytest.CaptureFixture[str], daemon: Daemon, given: str) -> None:
    result = run(capsys, daemon, "gpu", "mode", given, "MIG", "--json")
    assert result.code == 0, result.err
    assert daemon.admin.requests[-1] == admin_pb2.SetGpuModeRequest(gpu_uuid=UUID_A0, mode=types_pb2.GPU_MODE_MIG)
    assert json.loads(result.out)["mode"] == "GPU_MODE_MIG"


@pytest.mark.parametrize(("given", "uuid"), [("node-a:1", UUID_A1), ("node-b:0", UUID_B0), (" node-a:0 ", UUID_A0)])
def test_gpu_mode_accepts_node_and_index(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, given: str, uuid: str
) -> None:
    result = run(capsys, daemon, "gpu", "mode", given, "shared")
    assert result.code == 0, result.err
    assert daemon.admin.requests[-1] == admin_pb2.SetGpuModeRequest(gpu_uuid=uuid, mode=types_pb2.GPU_MODE_SHARED)


@pytest.mark.parametrize(
    ("given", "code", "line"),
    [
        (
            "node-z:0",
            3,
            "GPU_NOT_FOUND: no node 'node-z' in the pool (nodes with GPUs: node-a, node-b, node-c); see `vgpuctl gpus`",
        ),
        ("node-a:7", 3, "GPU_NOT_FOUND: node node-a has no GPU 7 (its GPUs: 0, 1); see `vgpuctl gpus --node node-a`"),
        ("node-a:x", 2, "'node-a:x' is neither a GPU uuid nor NODE:INDEX (e.g. gpu-07:0, as `vgpuctl gpus` shows)"),
        (":0", 2, "':0' is neither a GPU uuid nor NODE:INDEX (e.g. gpu-07:0, as `vgpuctl gpus` shows)"),
    ],
)
def test_gpu_mode_unknown_node_or_index_is_one_line(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, given: str, code: int, line: str
) -> None:
    result = run(capsys, daemon, "gpu", "mode", given, "shared")
    assert result.code == code
    assert result.err_lines == [f"vgpuctl: error: {line}"]
    assert not any(isinstance(request, admin_pb2.SetGpuModeRequest) for request in daemon.admin.requests)


def test_evict_of_an_ended_lease_is_refused_with_how_it_ended(
    capsys: pytest.CaptureFixture[str], daemon: Daemon
) -> None:
    message = "lease lease-bbb had already ended: revoked (EVICTED_BY_ADMIN: maintenance); nothing was changed"
    daemon.admin.refusal = Refusal(grpc.StatusCode.FAILED_PRECONDITION, reasons.LEASE_ENDED, message)
    result = run(capsys, daemon, "evict", "lease-bbb")
    assert (result.code, result.out) == (1, "")
    assert result.err_lines == [f"vgpuctl: error: LEASE_ENDED: {message}"]


def test_gpu_mode_ambiguous_prefix_is_a_usage_error(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "gpu", "mode", "GPU-1a2b", "shared")
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith("vgpuctl: error: 'GPU-1a2b' matches 2 GPUs")
    assert not any(isinstance(request, admin_pb2.SetGpuModeRequest) for request in daemon.admin.requests)


def test_gpu_mode_unknown_prefix_is_not_found(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "gpu", "mode", "GPU-dead", "shared")
    assert result.code == 3
    assert result.err_lines == [
        "vgpuctl: error: GPU_NOT_FOUND: no GPU uuid starts with 'GPU-dead'; list them with `vgpuctl gpus`"
    ]


def test_gpu_mode_bad_value_exits_2_without_calling(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = run(capsys, daemon, "gpu", "mode", UUID_A0, "half")
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith("vgpuctl: error: ")
    assert "'shared', 'mig', 'exclusive'" in result.err
    assert "vgpuctl gpu mode --help" in result.err
    assert daemon.admin.requests == []


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "exit_code"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, reasons.GPU_BUSY, 1),
        (grpc.StatusCode.ABORTED, reasons.CONFLICT, 1),
        (grpc.StatusCode.PERMISSION_DENIED, reasons.LEASE_TOKEN_MISMATCH, 1),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, reasons.NO_CAPACITY, 1),
        (grpc.StatusCode.INTERNAL, reasons.INTERNAL, 1),
        (grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_REQUEST, 2),
        (grpc.StatusCode.NOT_FOUND, reasons.GPU_NOT_FOUND, 3),
        (grpc.StatusCode.UNAVAILABLE, reasons.STORE_UNAVAILABLE, 4),
    ],
)
def test_refusals_map_to_exit_codes_with_one_reason_line(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, code: grpc.StatusCode, reason: str, exit_code: int
) -> None:
    message = f"GPU {UUID_A0} has 2 leases; release or evict them first"
    daemon.admin.refusal = Refusal(code, reason, message)
    result = run(capsys, daemon, "gpu", "mode", UUID_A0, "mig")
    assert result.code == exit_code
    assert result.out == ""
    assert result.err_lines == [f"vgpuctl: error: {reason}: {message}"]


def test_multi_line_messages_are_folded_into_one_line(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    daemon.admin.refusal = Refusal(grpc.StatusCode.INTERNAL, reasons.INTERNAL, "first line\nsecond line")
    result = run(capsys, daemon, "nodes")
    assert result.code == 1
    assert result.err_lines == ["vgpuctl: error: INTERNAL: first line second line"]


def test_status_without_error_info_uses_the_code_name(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    daemon.admin.plain_failure = (grpc.StatusCode.PERMISSION_DENIED, "admins only")
    result = run(capsys, daemon, "drain", "node-a")
    assert result.code == 1
    assert result.err_lines == ["vgpuctl: error: PERMISSION_DENIED: admins only"]


def test_not_found_without_error_info_exits_3(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    daemon.admin.plain_failure = (grpc.StatusCode.NOT_FOUND, "no lease lease-zzz")
    result = run(capsys, daemon, "evict", "lease-zzz")
    assert result.code == 3
    assert result.err_lines == ["vgpuctl: error: NOT_FOUND: no lease lease-zzz"]


def test_unreachable_endpoint_exits_4_quickly_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VGPU_ENDPOINT", raising=False)
    with tempfile.TemporaryDirectory(prefix="vgpuctl-") as directory:
        endpoint = f"unix://{directory}/missing.sock"
        started = time.monotonic()
        code = main(["--endpoint", endpoint, "nodes"])
        elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 4
    assert elapsed < 5
    assert len(err.splitlines()) == 1
    assert err.startswith(f"vgpuctl: error: cannot reach vgpud at {endpoint}")
    assert "systemctl status vgpud" in err
    assert "VGPU_ENDPOINT" in err


def test_silent_daemon_hits_the_deadline_and_exits_4(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    daemon.admin.hang = True
    started = time.monotonic()
    result = run(capsys, daemon, "--timeout", "0.3", "gpus")
    elapsed = time.monotonic() - started
    assert result.code == 4
    assert 0.25 < elapsed < 5
    assert result.err_lines == [
        f"vgpuctl: error: vgpud at {daemon.endpoint} did not answer ListGpus within 0.3s; "
        "check `systemctl status vgpud` on that host, "
        "or point --endpoint / VGPU_ENDPOINT at a running daemon, or raise --timeout"
    ]


VERBS = [
    ("nodes",),
    ("gpus",),
    ("leases", "--all"),
    ("evict", "lease-aaa"),
    ("drain", "node-a"),
    ("gpu", "mode", UUID_A0, "shared"),
    ("gpu", "mode", "GPU-5e6f", "shared"),
    ("mig", "show"),
]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
@pytest.mark.parametrize(("flags", "limit"), [((), 10.0), (("--timeout", "3"), 3.0)])
def test_every_call_carries_the_deadline(
    capsys: pytest.CaptureFixture[str],
    daemon: Daemon,
    verb: tuple[str, ...],
    flags: tuple[str, ...],
    limit: float,
) -> None:
    result = run(capsys, daemon, *flags, *verb)
    assert result.code == 0, result.err
    assert daemon.admin.time_remaining
    for remaining in daemon.admin.time_remaining:
        assert remaining is not None
        # gRPC rounds the deadline up when it encodes it on the wire, so allow a little over the limit.
        assert limit - 2 < remaining <= limit + 0.5


@pytest.mark.parametrize(
    "args",
    [
        ["nope"],
        ["--timeout", "0", "nodes"],
        ["--timeout", "soon", "nodes"],
        ["nodes", "--bogus"],
        ["evict"],
        ["--endpoint", "ftp://x", "nodes"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.delenv("VGPU_ENDPOINT", raising=False)
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("vgpuctl: error: ")
    assert "Traceback" not in captured.err

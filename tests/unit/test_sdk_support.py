"""A real in-process gRPC server with a scripted WorkloadService, shared by the SDK tests.

The servicer records every call with the deadline the client sent (context.time_remaining()), and plays
per-call scripts: messages to stream, errors with google.rpc.ErrorInfo, or a pause until the test lets go.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]  # no stubs
from grpc_status import rpc_status

from vgpu._private import reasons
from vgpu.api.v1 import types_pb2, workload_pb2, workload_pb2_grpc

LEASE_ID = "lease-0123456789ab"
TOKEN = f"{LEASE_ID}.s3cr3t"


@dataclass(frozen=True)
class Fail:
    """Script step: end the call with this status code, and an ErrorInfo when `reason` is set."""

    code: grpc.StatusCode
    reason: str | None = None
    message: str = "refused by the fake"


@dataclass
class Hold:
    """Script step: block until `release` is set (or the call is cancelled), signalling `reached` first."""

    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    left: threading.Event = field(default_factory=threading.Event)
    """Set when the step is over; `client_cancelled` says whether the client cancelled the call."""
    client_cancelled: bool = False


@dataclass(frozen=True)
class Call:
    method: str
    request: Any
    time_remaining: float | None


def fail_with(context: grpc.ServicerContext, step: Fail) -> None:
    """Abort the call like vgpud does: status code + message + ErrorInfo in the status details."""
    details = []
    if step.reason is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=step.reason, domain=reasons.DOMAIN))
        details.append(detail)
        status = rpc_status.to_status(status_pb2.Status(code=step.code.value[0], message=step.message, details=details))
        context.abort_with_status(status)
    context.abort(step.code, step.message)


def make_lease(
    *,
    lease_id: str = LEASE_ID,
    token: str = TOKEN,
    state: int = types_pb2.LEASE_STATE_GRANTED,
    ttl: int = 30,
    end_reason: str = "",
) -> types_pb2.Lease:
    lease = types_pb2.Lease(
        id=lease_id,
        state=state,  # type: ignore[arg-type]
        project="team-a",
        priority="train",
        node="node-1",
        token=token,
        ttl=duration_pb2.Duration(seconds=ttl),
        created_at=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        end_reason=end_reason,
        slices=[
            types_pb2.Slice(
                node="node-1",
                gpu_uuid="GPU-aaaa",
                gpu_index=0,
                gpu_model="h100-80gb",
                isolation=types_pb2.ISOLATION_SHARED,
                memory_bytes=20 * 1024**3,
                compute_milli=500,
            )
        ],
    )
    lease.env.update({"CUDA_VISIBLE_DEVICES": "GPU-aaaa", "VGPU_LEASE_ID": lease_id})
    if token:
        lease.env["VGPU_LEASE"] = token
    return lease


NODE_GPUS = {"node-1": ("GPU-aaaa",), "node-2": ("GPU-bbbb", "GPU-cccc")}
"""Where make_gang_lease puts its slices: one on node-1 (the answering daemon's node), two on node-2."""


def make_gang_lease(**kwargs: Any) -> types_pb2.Lease:
    """make_lease spread over two nodes as a gang across nodes is: slices and one environment per node.

    Like vgpud, the per-node environments carry the token only when the lease does (the acquire answer).
    """
    lease = make_lease(**kwargs)
    del lease.slices[:]
    for node, uuids in NODE_GPUS.items():
        for index, uuid in enumerate(uuids):
            lease.slices.add(
                node=node,
                gpu_uuid=uuid,
                gpu_index=index,
                gpu_model="h100-80gb",
                isolation=types_pb2.ISOLATION_SHARED,
                memory_bytes=20 * 1024**3,
                compute_milli=500,
            )
        env = {"CUDA_VISIBLE_DEVICES": ",".join(uuids), "VGPU_LEASE_ID": lease.id, "VGPU_ENDPOINT": f"unix:///{node}"}
        if lease.token:
            env["VGPU_LEASE"] = lease.token
        lease.node_environments.add(node=node, env=env)
    lease.request.gang = True
    lease.request.any_node = True
    return lease


def queued(position: int, length: int, reason: str = "waiting for memory") -> workload_pb2.AcquireResponse:
    return workload_pb2.AcquireResponse(
        queued=types_pb2.QueueStatus(
            position=position,
            queue_length=length,
            reason=reason,
            estimated_wait=duration_pb2.Duration(seconds=7),
        )
    )


def granted(**kwargs: Any) -> workload_pb2.AcquireResponse:
    return workload_pb2.AcquireResponse(lease=make_lease(**kwargs))


def event(
    sequence: int,
    kind: int,
    state: int = types_pb2.LEASE_STATE_GRANTED,
    *,
    lease: types_pb2.Lease | None = None,
) -> workload_pb2.WatchLeaseResponse:
    """A WatchLease event; `lease` replaces the default make_lease(state=state) the event carries."""
    msg = workload_pb2.WatchLeaseResponse(
        sequence=sequence,
        type=kind,  # type: ignore[arg-type]
        time=timestamp_pb2.Timestamp(seconds=1_700_000_100),
        lease=lease if lease is not None else make_lease(state=state, token=""),
    )
    if kind == workload_pb2.LEASE_EVENT_TYPE_PREEMPT:
        msg.preempt.deadline.CopyFrom(timestamp_pb2.Timestamp(seconds=1_700_000_200))
        msg.preempt.reason = "team-b reclaims its quota"
    return msg


PREEMPT_DEADLINE = 1_700_000_200
"""The deadline (epoch seconds) event() puts on PREEMPT events."""


def suspended_lease() -> types_pb2.Lease:
    """The lease as vgpud shows it once a preemption is acknowledged: no slices, no GPUs in its env."""
    lease = make_lease(state=types_pb2.LEASE_STATE_SUSPENDED, token="")
    del lease.slices[:]
    del lease.env["CUDA_VISIBLE_DEVICES"]
    lease.preemptions = 1
    return lease


def resumed_lease(*uuids: str, node: str = "node-2") -> types_pb2.Lease:
    """The lease granted again on other GPUs (default one slice on GPU-bbbb of node-2), as a RESUMED event has it."""
    lease = make_lease(token="")
    lease.node = node
    del lease.slices[:]
    for index, uuid in enumerate(uuids or ("GPU-bbbb",)):
        lease.slices.add(
            node=node,
            gpu_uuid=uuid,
            gpu_index=index,
            gpu_model="h100-80gb",
            isolation=types_pb2.ISOLATION_SHARED,
            memory_bytes=20 * 1024**3,
            compute_milli=500,
        )
    lease.env["CUDA_VISIBLE_DEVICES"] = ",".join(uuids or ("GPU-bbbb",))
    lease.preemptions = 1
    lease.steps.add(step="granted", time=timestamp_pb2.Timestamp(seconds=1_700_000_000))
    lease.steps.add(step="preempt", time=timestamp_pb2.Timestamp(seconds=1_700_000_100))
    lease.steps.add(step="resumed", time=timestamp_pb2.Timestamp(seconds=1_700_000_300))
    return lease


Step = Any  # a response message, Fail or Hold


class FakeWorkload(workload_pb2_grpc.WorkloadServiceServicer):
    """Scripted WorkloadService: one script (list of steps) per call, popped in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.acquire_scripts: list[list[Step]] = []
        self.watch_scripts: list[list[Step]] = []
        self.unary_scripts: dict[str, list[Step]] = {}
        self.heartbeat: Callable[[workload_pb2.HeartbeatRequest], Step] = lambda _r: workload_pb2.HeartbeatResponse(
            state=types_pb2.LEASE_STATE_GRANTED, ttl=duration_pb2.Duration(seconds=30)
        )
        self.heartbeats = threading.Semaphore(0)
        self.lease = make_lease()
        self.acked = threading.Event()
        """Set once AckPreempt was called (a Hold(release=servicer.acked) step waits for it)."""

    # -- helpers ----------------------------------------------------------------------------------
    def record(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls.append(Call(method, request, context.time_remaining()))

    def calls_of(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def _play(self, step: Step, context: grpc.ServicerContext) -> Any:
        if isinstance(step, Fail):
            fail_with(context, step)
        if isinstance(step, Hold):
            step.reached.set()
            try:
                while not step.release.wait(0.05):
                    if not context.is_active():
                        step.client_cancelled = True
                        return None
                return None
            finally:
                step.left.set()
        return step

    def _unary(self, method: str, request: Any, context: grpc.ServicerContext, default: Any) -> Any:
        self.record(method, request, context)
        with self.lock:
            script = self.unary_scripts.get(method)
            step = script.pop(0) if script else default
        return self._play(step, context)

    def _stream(self, scripts: list[list[Step]], context: grpc.ServicerContext) -> Iterator[Any]:
        with self.lock:
            script = scripts.pop(0) if scripts else []
        for step in script:
            msg = self._play(step, context)
            if msg is not None:
                yield msg

    # -- WorkloadService --------------------------------------------------------------------------
    def Acquire(self, request: Any, context: Any) -> Any:  # noqa: N802 -- gRPC method name
        self.record("Acquire", request, context)
        with self.lock:
            if not self.acquire_scripts:
                self.acquire_scripts.append([granted()])
        yield from self._stream(self.acquire_scripts, context)

    def Release(self, request: Any, context: Any) -> Any:  # noqa: N802 -- gRPC method name
        ended = make_lease(state=types_pb2.LEASE_STATE_RELEASED, token="", end_reason=reasons.END_RELEASED)
        return self._unary("Release", request, context, workload_pb2.ReleaseResponse(lease=ended))

    def Heartbeat(self, request: Any, context: Any) -> Any:  # noqa: N802 -- gRPC method name
        self.record("Heartbeat", request, context)
        try:
            return self._play(self.heartbeat(request), context)
        finally:
            self.heartbeats.release()

    def GetLease(self, request: Any, context: Any) -> Any:  # noqa: N802 -- gRPC method name
        lease = types_pb2.Lease()
        lease.CopyFrom(self.lease)
        lease.token = ""
        lease.env.pop("VGPU_LEASE", None)
        for entry in lease.node_environments:
            entry.env.pop("VGPU_LEASE", None)
        return self._unary("GetLease", request, context, workload_pb2.GetLeaseResponse(lease=lease))

    def ListLeases(self, request: Any, context: Any) -> Any:  # noqa: N802 -- gRPC method name
        return self._unary(
            "ListLeases", request, context, workload_pb2.ListLeasesResponse(leases=[make_lease(token="")])
        )

    def WatchLease(self, request: Any, context: Any) -> Any:  # noqa: N802 -- gRPC method name
        self.record("WatchLease", request, context)
        yield from self._stream(self.watch_scripts, context)

    def AckPreempt(self, request: Any, context: Any) -> Any:  # noqa: N802 -- gRPC method name
        try:
            return self._unary("AckPreempt", request, context, workload_pb2.AckPreemptResponse(lease=suspended_lease()))
        finally:
            self.acked.set()


@contextlib.contextmanager
def short_tmp_dir() -> Iterator[Path]:
    """A temp dir with a short path: unix socket paths are limited to ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vgpu-t-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def serve(servicer: FakeWorkload, socket_path: Path) -> Iterator[grpc.Server]:
    """Run `servicer` on a unix socket until the block ends."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    workload_pb2_grpc.add_WorkloadServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield server
    finally:
        server.stop(None)


@contextlib.contextmanager
def fake_daemon() -> Iterator[tuple[FakeWorkload, str, Path]]:
    """A FakeWorkload served on a fresh socket: (servicer, endpoint, socket path)."""
    servicer = FakeWorkload()
    with short_tmp_dir() as tmp:
        socket_path = tmp / "vgpud.sock"
        with serve(servicer, socket_path):
            yield servicer, f"unix://{socket_path}", socket_path

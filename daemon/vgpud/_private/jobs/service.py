"""The job door (see jobs.proto): RunJob for launchers, RunOnNode for the daemons of a job's other nodes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar, TypeVar

import grpc

from vgpu._private import reasons
from vgpu.api.v1 import jobs_pb2, jobs_pb2_grpc
from vgpud._private.auth.gate import caller
from vgpud._private.config import DaemonConfig
from vgpud._private.jobs.cgroup import JobCgroups
from vgpud._private.jobs.config import advertised
from vgpud._private.jobs.coordinator import Job, check_signal, check_start
from vgpud._private.jobs.node_session import JobsHere, run_node
from vgpud._private.jobs.peers import PeerLinks
from vgpud._private.refusal import Refusal
from vgpud._private.services.serving import Serving
from vgpud._private.services.status import GuardedServicer, guarded_bidi

Ctx = grpc.aio.ServicerContext[Any, Any]


Request = TypeVar("Request", jobs_pb2.RunJobRequest, jobs_pb2.RunOnNodeRequest)


async def _first(requests: AsyncIterator[Request], field: str) -> Request:
    """The opening message, which must carry `field`."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("input") != field:
        raise Refusal(reasons.INVALID_REQUEST, f"the first message of the call must carry {field}")
    return first


async def _signals_from(requests: AsyncIterator[Request], signals: asyncio.Queue[int]) -> None:
    """Later messages: signals for every rank (others are ignored; a full queue drops the repeat)."""
    async for message in requests:
        if message.WhichOneof("input") == "signal":
            with contextlib.suppress(asyncio.QueueFull, Refusal):
                signals.put_nowait(check_signal(message.signal))


class JobService(GuardedServicer, jobs_pb2_grpc.JobServiceServicer):
    """Start a lease's processes on its nodes and stream them back."""

    service_name: ClassVar[str] = "vgpu.api.v1.JobService"

    def __init__(self, serving: Serving, here: JobsHere, peers: PeerLinks) -> None:
        self._s = serving
        self._here = here
        self._peers = peers

    @classmethod
    def for_daemon(cls, serving: Serving, cfg: DaemonConfig, host_name: str) -> JobService:
        """The service as vgpud runs it: its advertised address, job cgroups and node certificate for peers."""
        address, _ = advertised(cfg.node, cfg.tcp_listen, host_name)
        here = JobsHere(serving, cfg.jobs, address, JobCgroups(cfg.node_name, enabled=cfg.jobs.cgroups))
        return cls(serving, here, PeerLinks(cfg.tls.cert_file, cfg.tls.key_file, cfg.tls.client_ca_file))

    async def close(self) -> None:
        """Close the channels to other daemons and this node's job cgroup directory (daemon shutdown)."""
        await self._peers.close()
        self._here.cgroups.close()

    @guarded_bidi("RunJob")
    async def RunJob(  # noqa: N802 -- gRPC method name
        self, requests: AsyncIterator[jobs_pb2.RunJobRequest], context: Ctx
    ) -> AsyncIterator[jobs_pb2.RunJobResponse]:
        """A job on every node of a lease, launched by its owner."""
        first = await _first(requests, "start")
        check_start(first.start)
        job = Job(self._here, self._peers, caller(), first.start)
        plans = await job.check()
        signals: asyncio.Queue[int] = asyncio.Queue(16)
        reader = asyncio.ensure_future(_signals_from(requests, signals))
        try:
            async for event in job.run(plans, signals):
                yield jobs_pb2.RunJobResponse(event=event)
        finally:
            reader.cancel()

    @guarded_bidi("RunOnNode")
    async def RunOnNode(  # noqa: N802 -- gRPC method name
        self, requests: AsyncIterator[jobs_pb2.RunOnNodeRequest], context: Ctx
    ) -> AsyncIterator[jobs_pb2.RunOnNodeResponse]:
        """This node's ranks of a job another daemon coordinates."""
        first = await _first(requests, "node_start")
        check_start(first.node_start.job)
        signals: asyncio.Queue[int] = asyncio.Queue(16)
        reader = asyncio.ensure_future(_signals_from(requests, signals))
        try:
            async for event in run_node(self._here, first.node_start, signals):
                yield jobs_pb2.RunOnNodeResponse(event=event)
        finally:
            reader.cancel()

"""A job across a lease's nodes, run from the launcher's own daemon: start every node, merge, stop together.

Node rank 0 starts first and picks the rendezvous port; the others start with it. Each node's events go
into one bounded queue. The first failing rank (or a node that refuses or is lost) stops every node unless
the launcher asked to keep going; the job's status is that first failure's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import grpc

from vgpu._private import reasons
from vgpu._private.rpc_errors import failure_of_aio_call
from vgpu.api.v1 import jobs_pb2
from vgpud._private.auth.identity import Identity
from vgpud._private.core.model import LeaseState
from vgpud._private.jobs.node_session import JobsHere, run_node
from vgpud._private.jobs.peers import PeerLinks
from vgpud._private.jobs.rendezvous import NodePlan, plan
from vgpud._private.refusal import Refusal

NODE_FAILED_STATUS: Final = 70
"""The job's status when a node refused or was lost before any rank failed (EX_SOFTWARE)."""
_QUEUE: Final = 1024
_CUT_OFF_S: Final = 10.0
"""A node whose ranks have not ended this long after their SIGKILL is cut off (its call cancelled)."""
_STREAM_DEADLINE_S: Final = 30 * 86_400.0
"""A job's node streams last as long as the job; this bounds them anyway (30 days)."""
_MAX_ARGV_BYTES: Final = 1 << 20
_MAX_ENV_BYTES: Final = 1 << 20
_MAX_ITEMS: Final = 10_000
_SIGNALS: Final = frozenset({1, 2, 9, 10, 12, 15})
"""HUP, INT, KILL, USR1, USR2, TERM: what a launcher may ask every rank to receive."""


def check_start(start: jobs_pb2.JobStart) -> None:
    """INVALID_REQUEST for a start a node could not run (bounded, so one launch cannot flood a node)."""
    if not start.argv or not start.argv[0]:
        raise Refusal(reasons.INVALID_REQUEST, "the job has no command: set argv")
    if len(start.argv) > _MAX_ITEMS or sum(len(a) for a in start.argv) > _MAX_ARGV_BYTES:
        raise Refusal(reasons.INVALID_REQUEST, f"the command line is longer than {_MAX_ARGV_BYTES} bytes")
    if len(start.env) > _MAX_ITEMS or sum(len(k) + len(v) for k, v in start.env.items()) > _MAX_ENV_BYTES:
        raise Refusal(reasons.INVALID_REQUEST, f"the environment is larger than {_MAX_ENV_BYTES} bytes")
    if any(not k or "=" in k or "\0" in k or "\0" in v for k, v in start.env.items()):
        raise Refusal(reasons.INVALID_REQUEST, "an environment name is empty or holds '=' or NUL")
    if any("\0" in a for a in start.argv) or "\0" in start.cwd or len(start.cwd) > 4096:  # noqa: PLR2004 -- PATH_MAX
        raise Refusal(reasons.INVALID_REQUEST, "argv and cwd must not hold NUL bytes (cwd at most 4096 bytes)")


def check_signal(signum: int) -> int:
    """The signal number if a launcher may send it to every rank."""
    if signum not in _SIGNALS:
        raise Refusal(reasons.INVALID_REQUEST, f"signal {signum} is not one of {sorted(_SIGNALS)}")
    return signum


@dataclass(slots=True)
class _Node:
    plan: NodePlan
    signals: asyncio.Queue[int]
    task: asyncio.Task[None] | None = None


def _failed(node: str, reason: str, message: str) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(node_failed=jobs_pb2.NodeFailed(node=node, reason=reason, message=message))


class Job:
    """One launch: its nodes, their merged events and the failure policy."""

    def __init__(self, here: JobsHere, peers: PeerLinks, who: Identity, start: jobs_pb2.JobStart) -> None:
        self._here = here
        self._peers = peers
        self._who = who
        self._start = start
        self._events: asyncio.Queue[tuple[str, jobs_pb2.JobEvent | None]] = asyncio.Queue(_QUEUE)
        self._nodes: dict[str, _Node] = {}
        self._first_failure: tuple[str, int, int, str] | None = None
        self._ended_by_first = False
        self._stopping = False
        self._timers: list[asyncio.TimerHandle] = []

    async def check(self) -> list[NodePlan]:
        """The lease's nodes in rank order, after checking the launcher may run on it."""
        s = self._here.serving
        lease = (await s.allocator.owned(self._start.lease_id, self._start.token)).value
        if not self._who.same_person(lease.owner.user):
            raise Refusal(
                reasons.NOT_LEASE_OWNER,
                f"a job runs as the lease's owner; lease {lease.id} is {lease.owner.user}'s, you are {self._who.name}",
            )
        if lease.state.ended:
            raise Refusal(reasons.LEASE_ENDED, f"lease {lease.id} has ended ({lease.end_reason})")
        if lease.state is not LeaseState.GRANTED:
            raise Refusal(
                reasons.JOB_REFUSED, f"lease {lease.id} is {lease.state.value}; start jobs on a granted lease"
            )
        plans = plan(lease)
        for node in plans:
            if node.node == s.node:
                continue
            record = s.view.node(node.node)
            if record is None:
                raise Refusal(reasons.JOB_REFUSED, f"node {node.node} of lease {lease.id} is down")
            self._peers.stub(node.node, record.tcp_endpoint)  # refuses now when the node cannot be reached
        return plans

    async def run(self, plans: list[NodePlan], signals: asyncio.Queue[int]) -> AsyncIterator[jobs_pb2.JobEvent]:
        """Start the nodes, stream their events, apply the failure policy, end with `finished`."""
        world = sum(len(p.devices) for p in plans)
        try:
            first = plans[0]
            self._launch(first, self._node_start(first, len(plans), world, "", 0))
            pending = {first.node}
            meet: list[tuple[str, int]] = []
            async for event in self._until_rendezvous(pending, meet):
                yield event
            if self._first_failure is None and meet:
                master_addr, master_port = meet[0]
                for other in plans[1:]:
                    self._launch(other, self._node_start(other, len(plans), world, master_addr, master_port))
                    pending.add(other.node)
            forward = asyncio.ensure_future(self._forward(signals))
            try:
                async for event in self._until_done(pending):
                    yield event
            finally:
                forward.cancel()
        finally:
            await self._stop_and_wait()
        if self._first_failure is None:
            yield jobs_pb2.JobEvent(finished=jobs_pb2.JobFinished(status=0, message="every rank exited 0"))
        else:
            node, rank, status, message = self._first_failure
            yield jobs_pb2.JobEvent(finished=jobs_pb2.JobFinished(status=status, node=node, rank=rank, message=message))

    async def _until_rendezvous(
        self, pending: set[str], meet: list[tuple[str, int]]
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        """Node rank 0's events until it has started (its rendezvous goes into `meet`) or failed."""
        while not meet and self._first_failure is None:
            node, event = await self._events.get()
            if event is None:
                pending.discard(node)
                return
            yield event
            if event.HasField("started"):
                meet.append((event.started.master_addr, event.started.master_port))
            self._note(node, event)

    async def _until_done(self, pending: set[str]) -> AsyncIterator[jobs_pb2.JobEvent]:
        """Every node's events until each has ended."""
        while pending:
            node, event = await self._events.get()
            if event is None:
                pending.discard(node)
                continue
            yield event
            self._note(node, event)

    def _note(self, node: str, event: jobs_pb2.JobEvent) -> None:
        """Remember the first failure; stop every node on it (a lost or refusing node always stops the job)."""
        if self._ended_by_first:
            return  # rank 0 ended the job: the others' ends are its consequence
        if self._start.first_rank_ends_job and event.HasField("exited") and event.exited.rank == 0:
            self._ended_by_first = True
            if self._first_failure is None:
                self._first_failure = _failure_of(node, event)
            self._stop_all()
            return
        failure = _failure_of(node, event)
        if failure is None or self._first_failure is not None:
            return
        self._first_failure = failure
        if not self._start.keep_going or event.HasField("node_failed"):
            self._stop_all()

    def _node_start(
        self, node: NodePlan, nnodes: int, world: int, master_addr: str, master_port: int
    ) -> jobs_pb2.NodeStart:
        return jobs_pb2.NodeStart(
            job=self._start,
            user=self._who.name,
            node_rank=node.node_rank,
            nnodes=nnodes,
            master_addr=master_addr,
            master_port=master_port,
            first_rank=node.first_rank,
            world_size=world,
        )

    def _launch(self, node: NodePlan, start: jobs_pb2.NodeStart) -> None:
        entry = _Node(node, asyncio.Queue(16))
        entry.task = asyncio.create_task(self._pump(node.node, start, entry.signals), name=f"job-node-{node.node}")
        self._nodes[node.node] = entry

    async def _pump(self, node: str, start: jobs_pb2.NodeStart, signals: asyncio.Queue[int]) -> None:
        """One node's events into the merged queue, ending with None (a failure becomes a NodeFailed event)."""
        try:
            async for event in self._node_events(node, start, signals):
                await self._events.put((node, event))
        except Refusal as refusal:
            await self._events.put((node, _failed(node, refusal.reason, f"{node} refused: {refusal.message}")))
        except grpc.aio.AioRpcError as exc:
            failure = failure_of_aio_call(exc)
            if failure.reason:
                message = f"{node} refused: {failure.message}"
            else:
                message = f"node {node} was lost ({exc.code().name}: {exc.details()})"
            await self._events.put((node, _failed(node, failure.reason or reasons.JOB_NODE_LOST, message)))
        finally:
            with contextlib.suppress(asyncio.QueueFull):  # full only once nobody reads any more
                self._events.put_nowait((node, None))

    async def _node_events(
        self, node: str, start: jobs_pb2.NodeStart, signals: asyncio.Queue[int]
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        s = self._here.serving
        if node == s.node:
            async for event in run_node(self._here, start, signals):
                yield event
            return
        record = s.view.node(node)
        stub = self._peers.stub(node, record.tcp_endpoint if record is not None else "")

        async def inputs() -> AsyncIterator[jobs_pb2.RunOnNodeRequest]:
            yield jobs_pb2.RunOnNodeRequest(node_start=start)
            while True:
                yield jobs_pb2.RunOnNodeRequest(signal=await signals.get())

        call = stub.RunOnNode(inputs(), timeout=_STREAM_DEADLINE_S)
        try:
            async for response in call:
                yield response.event
        finally:
            call.cancel()

    async def _forward(self, signals: asyncio.Queue[int]) -> None:
        while True:
            signum = await signals.get()
            for entry in self._nodes.values():
                with contextlib.suppress(asyncio.QueueFull):
                    entry.signals.put_nowait(signum)

    def _stop_all(self) -> None:
        """SIGTERM to every rank now, SIGKILL after the grace; nodes that still have not ended are cut off."""
        if self._stopping:
            return
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        grace = self._here.config.stop_grace_s
        self._timers = [
            loop.call_later(grace, self._signal_all, signal.SIGKILL),
            loop.call_later(grace + _CUT_OFF_S, self._cut_off),
        ]

    def _signal_all(self, signum: int) -> None:
        for entry in self._nodes.values():
            with contextlib.suppress(asyncio.QueueFull):
                entry.signals.put_nowait(signum)

    def _cut_off(self) -> None:
        for entry in self._nodes.values():
            if entry.task is not None:
                entry.task.cancel()

    async def _stop_and_wait(self) -> None:
        """Stop every node and wait until each has stopped its ranks (in the background if this call is cut)."""
        self._stop_all()
        cleanup = asyncio.ensure_future(self._drain_until_stopped())
        self._here.tasks.add(cleanup)
        cleanup.add_done_callback(self._here.tasks.discard)
        await asyncio.shield(cleanup)

    async def _drain_until_stopped(self) -> None:
        tasks = [e.task for e in self._nodes.values() if e.task is not None]
        drain = asyncio.ensure_future(self._drain())
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            drain.cancel()
            for timer in self._timers:
                timer.cancel()

    async def _drain(self) -> None:
        """Read and drop what nodes still send while they stop, so none waits on a full queue."""
        while True:
            await self._events.get()


def _failure_of(node: str, event: jobs_pb2.JobEvent) -> tuple[str, int, int, str] | None:
    if event.HasField("exited") and event.exited.status != 0:
        return (node, event.exited.rank, event.exited.status, f"rank {event.exited.rank} on {node} failed")
    if event.HasField("node_failed"):
        return (node, 0, NODE_FAILED_STATUS, event.node_failed.message)
    return None

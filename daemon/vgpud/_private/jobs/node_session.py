"""This node's share of a job: check who and what, start the ranks, stream them, stop them with the lease.

The same session serves a remote launcher's daemon (RunOnNode over mutual TLS) and the launcher's own
daemon when the lease has slices here. The ranks stop when the caller goes away (its stream is cancelled),
when it asks, or when the lease ends: revoke, expiry or release stop every process the job started.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from vgpu._private import reasons
from vgpu.api.v1 import jobs_pb2
from vgpud._private.core.environment import lease_environment
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import LeaseState
from vgpud._private.jobs.cgroup import JobCgroups
from vgpud._private.jobs.config import JobsConfig
from vgpud._private.jobs.ranks import NodeRanks, RankSpec, account_of
from vgpud._private.jobs.rendezvous import Rendezvous, plan, process_environments
from vgpud._private.pool_view import Versioned
from vgpud._private.refusal import Refusal
from vgpud._private.services.serving import Serving

log = structlog.get_logger("vgpud.jobs")


@dataclass(slots=True)
class JobsHere:
    """What this node needs to run its share of jobs."""

    serving: Serving
    config: JobsConfig
    address: str
    """This node's advertised address (MASTER_ADDR when it is node rank 0)."""
    cgroups: JobCgroups
    running: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _free_port(address: str) -> int:
    """A TCP port free on this host now, for the job's rendezvous (the first rank binds it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port: int = probe.getsockname()[1]
        return port


async def _check_lease(here: JobsHere, start: jobs_pb2.NodeStart) -> LeaseRecord:
    """The lease, if the token is its own and it may run ranks here for the relayed user."""
    s = here.serving
    lease = (await s.allocator.owned(start.job.lease_id, start.job.token)).value
    if lease.state.ended:
        raise Refusal(reasons.LEASE_ENDED, f"lease {lease.id} has ended ({lease.end_reason})")
    if lease.state is not LeaseState.GRANTED:
        raise Refusal(reasons.JOB_REFUSED, f"lease {lease.id} is {lease.state.value}, not granted")
    if lease.owner.user != start.user:
        raise Refusal(reasons.NOT_LEASE_OWNER, f"lease {lease.id} is not {start.user}'s")
    if not any(piece.node == s.node for piece in lease.slices):
        raise Refusal(reasons.JOB_REFUSED, f"lease {lease.id} has no slices on {s.node}")
    return lease


async def run_node(
    here: JobsHere, start: jobs_pb2.NodeStart, signals: asyncio.Queue[int]
) -> AsyncIterator[jobs_pb2.JobEvent]:
    """Run this node's ranks of the job `start` describes; its events, until every rank has exited."""
    s = here.serving
    if not here.config.enabled:
        raise Refusal(reasons.JOB_REFUSED, "jobs are turned off on this node ([jobs] enabled = false)")
    lease = await _check_lease(here, start)
    # The user database may be LDAP or sssd behind NSS: looked up off the event loop.
    account = await asyncio.to_thread(account_of, start.user, allow_root=here.config.allow_root)
    if here.running >= here.config.max_jobs:
        raise Refusal(reasons.TOO_MANY_JOBS, f"{s.node} runs {here.config.max_jobs} jobs already ([jobs] max_jobs)")
    mine = next(p for p in plan(lease) if p.node == s.node)
    master_addr, master_port = start.master_addr, start.master_port
    if mine.node_rank == 0 and not master_addr:
        master_addr, master_port = here.address, _free_port(here.address)
    meet = Rendezvous(master_addr, master_port, start.nnodes, start.world_size)
    lease_env = lease_environment(lease, s.node, s.endpoint, start.job.token, s.mps_pipes(lease))
    envs = process_environments(
        dict(start.job.env), lease_env, mine, meet, per_gpu=start.job.per_gpu, node_address=here.address
    )
    first = mine.first_rank if start.job.per_gpu else mine.node_rank
    restarts = {"VGPU_RESTART_COUNT": str(start.job.restart_count)}
    ranks = [RankSpec(first + i, {**env, **restarts}) for i, env in enumerate(envs)]
    cgroup = here.cgroups.create(f"{lease.id}-{secrets.token_hex(4)}")
    node_ranks = NodeRanks(
        s.node, list(start.job.argv), cwd=start.job.cwd, account=account, cgroup=cgroup, grace=here.config.stop_grace_s
    )
    here.running += 1
    updates = s.view.listen_lease(lease.id)
    try:
        started = await node_ranks.start(ranks)
        log.info("job ranks started", lease=lease.id, user=account.name, ranks=[r.rank for r in ranks])
        for event in started:
            event.started.master_addr, event.started.master_port = master_addr, master_port
            yield event
        async for event in _events(node_ranks, signals, updates, lease.id):
            yield event
    finally:
        s.view.unlisten_lease(lease.id, updates)
        await asyncio.shield(_stop(here, node_ranks))


async def _stop(here: JobsHere, ranks: NodeRanks) -> None:
    try:
        await ranks.stop()
    finally:
        here.running -= 1


async def _events(
    ranks: NodeRanks, signals: asyncio.Queue[int], updates: asyncio.Queue[Versioned[LeaseRecord]], lease_id: str
) -> AsyncIterator[jobs_pb2.JobEvent]:
    """The ranks' events; signals asked for are delivered, and the lease's end stops the ranks."""
    next_event = asyncio.ensure_future(ranks.events.get())
    next_signal = asyncio.ensure_future(signals.get())
    next_update = asyncio.ensure_future(updates.get())
    try:
        while True:
            done, _ = await asyncio.wait({next_event, next_signal, next_update}, return_when=asyncio.FIRST_COMPLETED)
            if next_signal in done:
                ranks.signal(next_signal.result())
                next_signal = asyncio.ensure_future(signals.get())
            if next_update in done:
                record = next_update.result().value
                if record.state.ended:
                    yield jobs_pb2.JobEvent(
                        node_failed=jobs_pb2.NodeFailed(
                            node=ranks.node,
                            reason=reasons.LEASE_ENDED,
                            message=f"lease {lease_id} ended ({record.end_reason}): its processes were stopped",
                        )
                    )
                    await ranks.stop()
                    return
                next_update = asyncio.ensure_future(updates.get())
            if next_event in done:
                event = next_event.result()
                if event is None:
                    return
                yield event
                next_event = asyncio.ensure_future(ranks.events.get())
    finally:
        for pending in (next_event, next_signal, next_update):
            pending.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(next_event, next_signal, next_update, return_exceptions=True)

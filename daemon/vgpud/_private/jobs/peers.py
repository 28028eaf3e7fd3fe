"""Channels to other daemons for jobs: mutual TLS with this node's own certificate, one channel per peer."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import Final

import grpc

from vgpu._private import reasons
from vgpu._private.channels import open_aio_channel
from vgpu._private.tls import TlsConfig
from vgpu.api.v1 import jobs_pb2_grpc
from vgpud._private.refusal import Refusal

_MAX_PEERS: Final = 256
_PEER_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)
"""A peer whose host vanishes is noticed within about 25 s; one whose daemon dies, at once (the socket closes)."""


class PeerLinks:
    """Job channels to other daemons, opened on first use and kept (at most 256, least recently used go)."""

    def __init__(self, cert: Path | None, key: Path | None, ca: Path | None) -> None:
        self._tls = TlsConfig(cert, key, ca) if cert and key and ca else None
        self._channels: OrderedDict[str, grpc.aio.Channel] = OrderedDict()
        self._closing: set[asyncio.Future[None]] = set()

    def stub(self, node: str, endpoint: str) -> jobs_pb2_grpc.JobServiceAsyncStub:
        """A JobService stub for the daemon of `node` at `endpoint` (HOST:PORT)."""
        if self._tls is None:
            raise Refusal(
                reasons.JOB_REFUSED,
                f"this daemon cannot reach node {node}: jobs across nodes need its node certificate "
                "(set tcp_listen and the [tls] table)",
            )
        if not endpoint:
            raise Refusal(
                reasons.JOB_REFUSED,
                f"node {node} serves no TCP listener, so it cannot run a job's ranks: set tcp_listen there",
            )
        channel = self._channels.pop(endpoint, None)
        if channel is None:
            channel = open_aio_channel(endpoint, self._tls, options=_PEER_OPTIONS)
        self._channels[endpoint] = channel
        while len(self._channels) > _MAX_PEERS:
            _, old = self._channels.popitem(last=False)
            task = asyncio.ensure_future(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return jobs_pb2_grpc.JobServiceStub(channel)

    async def close(self) -> None:
        """Close every channel (daemon shutdown)."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

"""EtcdStore: the `Store` protocol over etcd's gRPC API.

The store's etcd_*.py modules are the only ones in the daemon that import etcd3aio; this one composes them:
etcd_endpoints (endpoints and TLS files), etcd_members (one channel per member, failover, retries),
etcd_leases (the keep-alive stream), etcd_watch (watch streams), etcd_codec and etcd_errors.

Every gRPC error leaves as StoreError (StoreUnavailableError when etcd did not answer). Reads, grants,
refreshes and revokes may be retried within their deadline; a transaction is retried only when etcd said
it was not proposed ("no leader"), because a retry of one whose first attempt applied would report a
false compare failure.

Use one EtcdStore from one event loop: its channels and streams belong to the loop that made them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import grpc
import grpc.aio

# etcd3aio exports its protobuf request types only from this private module.
from etcd3aio._protobuf import LeaseGrantRequest, LeaseRevokeRequest, RangeRequest, TxnRequest

from vgpud._private.store.base import Compare, KeyValue, Op, Snapshot, StoreError, TxnResult, WatchEvent
from vgpud._private.store.etcd_codec import compare, key_bytes, key_value, prefix_range, request_op
from vgpud._private.store.etcd_endpoints import read_tls_files, resolve_endpoints
from vgpud._private.store.etcd_leases import KeepAlive
from vgpud._private.store.etcd_members import REQUIRE_LEADER, Member, Members
from vgpud._private.store.etcd_watch import WATCH_CHECK_AFTER_S, watch_prefix


class EtcdStore:
    """Store over one gRPC channel per etcd member; build it with `await EtcdStore.connect(...)`."""

    def __init__(
        self, members: Sequence[Member], endpoints: Sequence[str], *, watch_check_after: float = WATCH_CHECK_AFTER_S
    ) -> None:
        self._members = Members(members, endpoints)
        self._keepalive = KeepAlive(self._members)
        self._watch_check_after = watch_check_after

    # -- connecting ------------------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        connect_timeout: float = 10.0,
        watch_check_after: float = WATCH_CHECK_AFTER_S,
    ) -> EtcdStore:
        """Resolve `endpoints` (host:port, http://..., https://...), open channels, wait for an answer.

        `watch_check_after`: seconds of silence on a watch stream before etcd is asked for progress; as long
        again without any answer and the stream is presumed dead and resumed on another member.
        """
        tls_files = any(f is not None for f in (ca_file, cert_file, key_file))
        target = await resolve_endpoints(endpoints, tls_files=tls_files)
        credentials: grpc.ChannelCredentials | None = None
        if target.tls:
            ca, key, cert = await asyncio.to_thread(read_tls_files, ca_file, cert_file, key_file)
            credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        members = [Member.open(address, credentials) for address in target.addresses]
        store = cls(members, endpoints, watch_check_after=watch_check_after)
        try:
            await store._members.ping(connect_timeout)
        except BaseException:
            await store.close()
            raise
        return store

    # -- key-value ------------------------------------------------------------------------------------
    async def get(self, key: str, *, timeout: float) -> KeyValue | None:
        """The key, or None when absent."""
        request = RangeRequest(key=key_bytes(key))
        response = await self._members.unary(
            "get",
            lambda m, t: m.kv.Range(request, timeout=t, metadata=REQUIRE_LEADER),
            timeout=timeout,
            idempotent=True,
        )
        return key_value(response.kvs[0]) if response.kvs else None

    async def get_prefix(self, prefix: str, *, timeout: float) -> Snapshot:
        """Every key under `prefix`, sorted by key (etcd's range order), with the revision of the read."""
        key, end = prefix_range(prefix)
        return await self._range("get_prefix", key, end, timeout=timeout)

    async def get_range(self, start: str, end: str, *, timeout: float) -> Snapshot:
        """Every key >= `start` and < `end`, sorted by key, with the revision of the read."""
        return await self._range("get_range", key_bytes(start), key_bytes(end), timeout=timeout)

    async def _range(self, what: str, key: bytes, end: bytes, *, timeout: float) -> Snapshot:
        request = RangeRequest(key=key, range_end=end)
        response = await self._members.unary(
            what,
            lambda m, t: m.kv.Range(request, timeout=t, metadata=REQUIRE_LEADER),
            timeout=timeout,
            idempotent=True,
        )
        return Snapshot(kvs=[key_value(kv) for kv in response.kvs], revision=response.header.revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float,
    ) -> TxnResult:
        """Apply `success` atomically when every compare holds, else `failure`; sent again only if not proposed."""
        request = TxnRequest(
            compare=[compare(c) for c in compares],
            success=[request_op(o) for o in success],
            failure=[request_op(o) for o in failure],
        )
        # A transaction's one attempt gets the whole deadline: cutting it short would not undo it.
        deadline = time.monotonic() + timeout
        response = await self._members.unary(
            "txn",
            lambda m, _t: m.kv.Txn(request, timeout=max(0.001, deadline - time.monotonic()), metadata=REQUIRE_LEADER),
            timeout=timeout,
            idempotent=False,
        )
        return TxnResult(succeeded=response.succeeded, revision=response.header.revision)

    # -- leases ---------------------------------------------------------------------------------------
    async def grant(self, ttl: int, *, timeout: float) -> int:
        """A new TTL lease (seconds). A retried grant can leave an unused lease, which simply expires."""
        request = LeaseGrantRequest(TTL=ttl)
        response = await self._members.unary(
            "lease grant",
            lambda m, t: m.lease.LeaseGrant(request, timeout=t, metadata=REQUIRE_LEADER),
            timeout=timeout,
            idempotent=True,
        )
        if response.error:
            raise StoreError(f"etcd lease grant failed: {response.error}")
        lease: int = response.ID
        return lease

    async def refresh(self, lease: int, *, timeout: float) -> int:
        """One keep-alive round on the shared keep-alive stream; the TTL left, 0 when the lease is gone.

        A stream that breaks, or stays silent for an attempt's share of `timeout`, is replaced by one on
        another member and the keep-alive sent again (it is idempotent).
        """
        return await self._keepalive.refresh(lease, timeout=timeout)

    async def revoke(self, lease: int, *, timeout: float) -> None:
        """End a lease now, deleting its keys; an unknown or expired lease is not an error."""
        request = LeaseRevokeRequest(ID=lease)

        async def send(member: Member, attempt_timeout: float) -> None:
            try:
                await member.lease.LeaseRevoke(request, timeout=attempt_timeout, metadata=REQUIRE_LEADER)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        await self._members.unary("lease revoke", send, timeout=timeout, idempotent=True)

    # -- watch ----------------------------------------------------------------------------------------
    def watch_prefix(self, prefix: str, *, start_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """Changes under `prefix` from `start_revision` (0: from now); CompactedError when that is gone.

        A broken stream is replaced after a backoff, on the next member, resuming after the last revision
        delivered, so no event is skipped or repeated. So is a stream that stays silent although etcd was
        asked for progress (a frozen member). Closing the iterator or cancelling its consumer cancels it.
        """
        return watch_prefix(self._members, prefix, start_revision=start_revision, check_after=self._watch_check_after)

    # -- closing --------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._members.closed

    async def close(self) -> None:
        """Close the channels; pending and later calls fail with StoreError. Safe to call again."""
        if not self._members.begin_close():
            return
        await self._keepalive.close()
        await self._members.close_channels()

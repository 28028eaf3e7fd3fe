"""Lease keep-alives over one shared LeaseKeepAlive stream, moved to another member when it fails or falls silent.

Grants and revokes are plain unary calls (see etcd_store); only refreshing needs a stream, and one stream
serves every lease of the store so that a daemon with many leases keeps one open call, not one each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

import grpc.aio

# etcd3aio exports its protobuf request types only from this private module.
from etcd3aio._protobuf import LeaseKeepAliveRequest

from vgpud._private.store.base import StoreError, StoreUnavailableError
from vgpud._private.store.etcd_errors import CLIENT_ERRORS, discard, store_error
from vgpud._private.store.etcd_members import REQUIRE_LEADER, RETRY_BACKOFF_S, Member, Members, attempt_budget


class KeepAlive:
    """The keep-alive stream of one store, and refreshes over it with failover between members."""

    def __init__(self, members: Members) -> None:
        self._members = members
        self._stream: KeepAliveStream | None = None

    async def refresh(self, lease: int, *, timeout: float) -> int:
        """One keep-alive round on the shared keep-alive stream; the TTL left, 0 when the lease is gone.

        A stream that breaks, or stays silent for an attempt's share of `timeout`, is replaced by one on
        another member and the keep-alive sent again (it is idempotent).
        """
        self._members.check_open("lease keep-alive")
        deadline = time.monotonic() + timeout
        backoff = RETRY_BACKOFF_S[0]
        failures = 0
        while True:
            stream = self._current()
            try:
                ttl = await stream.refresh(lease, attempt_budget(deadline - time.monotonic()))
            except StoreUnavailableError as exc:
                failures += 1
                if stream.failed is not None:
                    self._members.pass_over(stream.member)  # the next stream opens on another member at once
                # A stream that is alive but slow, or every member tried: back off before the next try.
                pause = backoff if stream.failed is None or failures % len(self._members) == 0 else 0.0
                if time.monotonic() + pause >= deadline - 0.001:
                    raise StoreUnavailableError(
                        f"etcd lease keep-alive: no answer within {timeout:g} s (last error: {exc})"
                    ) from None
                if pause:
                    await asyncio.sleep(pause)
                    backoff = min(backoff * 2, RETRY_BACKOFF_S[1])
            else:
                self._members.answered(stream.member)
                return ttl

    def _current(self) -> KeepAliveStream:
        """The shared keep-alive stream, replaced when it failed or its member stopped answering other calls.

        Replacing it early spares each refresh a timed-out attempt on a frozen member.
        """
        self._members.check_open("lease keep-alive")
        current = self._stream
        if current is not None and current.failed is None and current.member.passed_over_at > current.opened_at:
            current.retire("its member stopped answering other calls")
        if current is None or current.failed is not None:
            self._stream = current = KeepAliveStream(self._members.pick())
        return current

    async def close(self) -> None:
        """End the stream; refreshes waiting on it fail with StoreError."""
        if self._stream is not None:
            await self._stream.close()


class KeepAliveStream:
    """One LeaseKeepAlive stream shared by all refreshes: requests are pipelined, replies matched by lease ID.

    etcd answers a keep-alive stream's requests one by one in order, so replies for one lease ID arrive
    in the order their requests were written. Any failure ends the stream; the store opens a new one. So
    does silence: a refresh that gets no answer while nothing else arrived on the stream either.
    """

    def __init__(self, member: Member) -> None:
        self.member = member
        self._call = member.lease.LeaseKeepAlive(metadata=REQUIRE_LEADER)
        self._waiting: dict[int, collections.deque[asyncio.Future[int]]] = {}
        self._write_lock = asyncio.Lock()  # gRPC allows one write in flight per stream
        self._replies = 0
        self.opened_at = time.monotonic()
        self.failed: StoreError | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="etcd-lease-keepalive")

    async def refresh(self, lease: int, timeout: float) -> int:
        """Write one keep-alive request and wait up to `timeout` for its reply's TTL (0: the lease is gone)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                replies_before = await self._send(lease, future)
            done, _ = await asyncio.wait({future}, timeout=timeout)
        except TimeoutError:
            discard(future)
            raise StoreUnavailableError(f"etcd lease keep-alive: could not send within {timeout:.3g} s") from None
        except BaseException:
            discard(future)
            raise
        if done:
            return future.result()
        future.cancel()  # a late reply finds it done and is skipped
        if self._replies == replies_before:  # not a word on the stream since our request was queued
            self._fail(StoreUnavailableError(f"etcd lease keep-alive: the stream was silent for {timeout:.3g} s"))
        raise StoreUnavailableError(f"etcd lease keep-alive: no answer within {timeout:.3g} s")

    async def _send(self, lease: int, future: asyncio.Future[int]) -> int:
        """Queue `future` for `lease`'s next reply and write the request; how many replies had come before."""
        async with self._write_lock:
            if self.failed is not None:
                raise self._copy_failure()
            self._waiting.setdefault(lease, collections.deque()).append(future)
            replies_before = self._replies
            # If a write fails or is cancelled, whether its request went out is unknown and later replies
            # could be matched to the wrong refresh: the stream is dropped.
            try:
                await self._call.write(LeaseKeepAliveRequest(ID=lease))
            except CLIENT_ERRORS as exc:
                self._fail(store_error(exc, "lease keep-alive"))
                raise self._copy_failure() from None
            except BaseException:
                self._fail(None)
                raise
            return replies_before

    async def _read(self) -> None:
        try:
            while (response := await self._call.read()) is not grpc.aio.EOF:
                self._replies += 1
                waiting = self._waiting.get(response.ID)
                if waiting:
                    future = waiting.popleft()
                    if not waiting:
                        del self._waiting[response.ID]
                    if not future.done():  # a refresh that timed out leaves its cancelled future here
                        future.set_result(max(0, response.TTL))
            self._fail(StoreUnavailableError("etcd lease keep-alive: etcd ended the stream"))
        except CLIENT_ERRORS as exc:
            self._fail(store_error(exc, "lease keep-alive"))
        except asyncio.CancelledError:
            self._fail(StoreError("etcd lease keep-alive: the store is closed"))
            raise

    def retire(self, why: str) -> None:
        """End the stream; refreshes waiting on it fail as unavailable and are sent again on a new one."""
        self._fail(StoreUnavailableError(f"etcd lease keep-alive: stream closed: {why}"))

    def _copy_failure(self) -> StoreError:
        assert self.failed is not None
        return type(self.failed)(str(self.failed))

    def _fail(self, error: StoreError | None) -> None:
        """Mark the stream dead and fail every waiting refresh with a copy of `error`."""
        if self.failed is None:
            self.failed = error or StoreUnavailableError("etcd lease keep-alive: the stream was interrupted")
            self._call.cancel()
        for waiting in self._waiting.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(self._copy_failure())
        self._waiting.clear()

    async def close(self) -> None:
        """Stop reading; refreshes still waiting fail with StoreError."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

"""Watching a key prefix: etcd watch streams resumed on another member, without gaps, when they break or die.

A watch asks etcd to end it when its member loses the cluster's leader. A stream that stays silent even
when asked for progress is presumed dead (a frozen member, or a connection that froze without a reset)
and resumed on another member from the revision after the last event delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import grpc.aio
import structlog

# etcd3aio exports its protobuf request types only from this private module.
from etcd3aio._protobuf import WatchCreateRequest, WatchRequest

from vgpud._private.store.base import StoreError, WatchEvent
from vgpud._private.store.etcd_codec import prefix_range, watch_events
from vgpud._private.store.etcd_errors import UNANSWERED, being_cancelled, discard, store_error
from vgpud._private.store.etcd_members import REQUIRE_LEADER, Member, Members

log = structlog.get_logger("vgpud.store")

WATCH_CHECK_AFTER_S = 5.0
_WATCH_BACKOFF_S = (0.1, 2.0)
# A watch stream ended by these is resumed on a new stream; anything else is reported.
_WATCH_RESUMABLE = (
    *UNANSWERED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
)
# An empty WatchProgressRequest (etcd >= 3.4), built from a dict: etcd3aio exports no name for its type.
_PROGRESS_REQUEST = WatchRequest(progress_request={})


async def watch_prefix(
    members: Members, prefix: str, *, start_revision: int, check_after: float
) -> AsyncGenerator[WatchEvent, None]:
    """Changes under `prefix` from `start_revision` (0: from now); CompactedError when that is gone.

    A broken stream is replaced after a backoff, on the next member, resuming after the last revision
    delivered, so no event is skipped or repeated. So is a stream that stays silent for `check_after`
    seconds although etcd was then asked for progress. Closing the iterator or cancelling its consumer
    cancels it.
    """
    key, end = prefix_range(prefix)
    next_revision = start_revision
    backoff = _WATCH_BACKOFF_S[0]
    while True:
        members.check_open("watch")
        member = members.pick()
        try:
            async with contextlib.aclosing(_watch_stream(member, key, end, next_revision, check_after)) as responses:
                async for response in responses:
                    backoff = _WATCH_BACKOFF_S[0]
                    if response.created and next_revision == 0:
                        next_revision = response.header.revision + 1
                    # A progress notification carries no events: it only proved the stream alive.
                    for event in watch_events(response, prefix):
                        next_revision = event.kv.mod_revision + 1
                        yield event
            reason = "etcd ended the watch stream"
        except grpc.aio.AioRpcError as exc:
            if members.closed or exc.code() not in _WATCH_RESUMABLE:
                raise store_error(exc, "watch") from None
            reason = f"{exc.code().name}: {exc.details()}"
        except _WatchSilentError as exc:
            reason = str(exc)
        except grpc.aio.BaseError as exc:
            raise store_error(exc, "watch") from None
        except asyncio.CancelledError:
            if members.closed and not being_cancelled():  # grpc.aio's way of failing calls on close()
                raise StoreError("etcd watch: the store was closed") from None
            raise
        members.pass_over(member)
        log.warning(
            "etcd watch broke; resuming", prefix=prefix, revision=next_revision, member=member.address, error=reason
        )
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, _WATCH_BACKOFF_S[1])


async def _watch_stream(
    member: Member, key: bytes, end: bytes, start: int, check_after: float
) -> AsyncGenerator[Any, None]:
    """The WatchResponses of one new watch stream on `member`, until it ends or fails.

    etcd says nothing on a quiet stream, so after `check_after` seconds of silence it is asked for
    progress; when that gets no answer either, _WatchSilentError (the member froze, or its connection
    did without a reset).
    """
    call = member.watch.Watch(metadata=REQUIRE_LEADER)
    read: asyncio.Future[Any] | None = None
    try:
        create = WatchCreateRequest(key=key, range_end=end, start_revision=start)
        await _write_within(call, WatchRequest(create_request=create), 2 * check_after)
        asked = False
        while True:
            if read is None:
                # A pending read outlives the waits below: cancelling a read would cancel the call.
                read = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({read}, timeout=check_after)
            if not done:
                if asked:
                    raise _WatchSilentError(f"no answer on the watch stream for {2 * check_after:g} s")
                await _write_within(call, _PROGRESS_REQUEST, check_after)
                asked = True
                continue
            response, read = read.result(), None
            if response is grpc.aio.EOF:
                return
            asked = False
            yield response
    finally:
        discard(read)
        call.cancel()


class _WatchSilentError(Exception):
    """A watch stream answered nothing, not even a requested progress notification: its member is gone."""


async def _write_within(call: Any, request: Any, timeout: float) -> None:
    """Write to a watch stream; a write that finds no room in `timeout` (flow control) means a frozen member."""
    try:
        async with asyncio.timeout(timeout):
            await call.write(request)
    except TimeoutError:
        raise _WatchSilentError(f"a write to the watch stream found no room for {timeout:g} s") from None

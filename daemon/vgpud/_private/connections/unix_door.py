"""The public Unix socket: each connection's uid from the kernel (SO_PEERCRED), capped per uid, piped to gRPC.

The gRPC server itself listens on a private socket (a 0700 directory) behind this door.

gRPC's Python server cannot tell who opened a connection, nor refuse one before it costs a descriptor and
HTTP/2 state; this door can. Without it one local user opening thousands of idle connections exhausts the
daemon's descriptors and stops every other user's heartbeats. A refused connection gets an HTTP/2 GOAWAY
(ENHANCE_YOUR_CALM) as its first frame, whose text says which cap it hit: gRPC clients fail at once (they
expected SETTINGS) and the SDK recognises the refusal; raw clients can read the text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from vgpud._private.config_limits import LimitsConfig
from vgpud._private.log_limit import LogLimit

_PEERCRED: Final = struct.Struct("3i")
_ENHANCE_YOUR_CALM: Final = 0xB
_REFUSED_LINGER_S: Final = 1.0
_HIGH_WATER: Final = 256 * 1024
"""Bytes buffered toward one side before the door stops reading from the other (flow control)."""


def _goaway(message: str) -> bytes:
    debug = message.encode()[:512]
    payload = struct.pack(">II", 0, _ENHANCE_YOUR_CALM) + debug
    return struct.pack(">I", len(payload))[1:] + b"\x07\x00" + struct.pack(">I", 0) + payload


def peer_uid(sock: socket.socket) -> int:
    """The connecting process's uid, as the kernel recorded it at connect()."""
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return int(uid)


class UnixDoor:
    """Accepts on the public socket, applies the connection caps, pipes the rest to gRPC's private socket."""

    def __init__(
        self,
        public: Path,
        inner: Path,
        limits: LimitsConfig,
        *,
        log_limit: LogLimit,
        on_count: Callable[[int], object] = lambda _n: None,
        on_refused: Callable[[str], object] = lambda _cap: None,
    ) -> None:
        self._public = public
        self._inner = inner
        self._limits = limits
        self._log = log_limit
        self._on_count = on_count
        self._on_refused = on_refused
        self._by_uid: dict[int, int] = {}
        self._open = 0
        self._pipes: set[_Client] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Listen on the public path (mode 0666: every local user may connect and is then counted).

        The door runs its own event loop on its own thread: piping bytes must not wait behind the main
        loop's work, or a busy daemon would stall every connection's HTTP/2 handshake and keepalives.
        """
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        main = asyncio.get_running_loop()

        def report(error: BaseException | None) -> None:
            if not started.done():
                if error is None:
                    started.set_result(None)
                else:
                    started.set_exception(error)

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_unix_server(lambda: _Client(self), path=str(self._public), backlog=1024)
                )
                os.chmod(self._public, 0o666)  # noqa: S103, PTH101 -- every local user's door; calls prove who
            except OSError as exc:
                main.call_soon_threadsafe(report, exc)
                loop.close()
                return
            main.call_soon_threadsafe(report, None)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="vgpud-unix-door", daemon=True)
        self._thread.start()
        await started

    def stop_accepting(self) -> None:
        """Take no new connections (shutdown); the open ones stay until `close`."""
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            loop.call_soon_threadsafe(server.close)

    async def close(self) -> None:
        """Close every piped connection and the listener, and stop the door's thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        closed = asyncio.run_coroutine_threadsafe(self._close_in_loop(), loop)
        with contextlib.suppress(TimeoutError, concurrent.futures.TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(closed), 3.0)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 3.0)

    async def _close_in_loop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()

    # -- the caps ---------------------------------------------------------------------------------
    def admit(self, uid: int) -> str:
        """An empty string when `uid` may open one more connection, else the refusal text (counted)."""
        limits = self._limits
        if self._open >= limits.max_connections:
            return self._refuse(
                "max_connections",
                f"vgpud has {self._open} open connections (max_connections = {limits.max_connections}); retry later",
            )
        held = self._by_uid.get(uid, 0)
        if uid != 0 and held >= limits.max_connections_per_uid:
            return self._refuse(
                "max_connections_per_uid",
                f"TOO_MANY_CONNECTIONS: uid {uid} has {held} open connections to vgpud (max_connections_per_uid = "
                f"{limits.max_connections_per_uid}); close idle channels or share one per process",
            )
        self._by_uid[uid] = held + 1
        self._open += 1
        self._on_count(self._open)
        return ""

    def _refuse(self, cap: str, message: str) -> str:
        self._on_refused(cap)
        self._log.warning("connection refused", event=cap, cap=cap, detail=message)
        return message

    def left(self, uid: int) -> None:
        """A piped connection closed."""
        held = self._by_uid.get(uid, 0) - 1
        if held > 0:
            self._by_uid[uid] = held
        else:
            self._by_uid.pop(uid, None)
        self._open -= 1
        self._on_count(self._open)


class _Client(asyncio.Protocol):
    """The accepted side of one connection; its bytes go to `_Inner` and back."""

    def __init__(self, door: UnixDoor) -> None:
        self._door = door
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Transport | None = None
        self._uid: int | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        try:
            uid = peer_uid(transport.get_extra_info("socket"))
        except OSError:
            transport.abort()
            return
        refusal = self._door.admit(uid)
        if refusal:
            # Closed a moment later, not at once: a client still writing its preface would see a broken pipe
            # instead of the GOAWAY that says why.
            transport.write(_goaway(refusal))
            asyncio.get_running_loop().call_later(_REFUSED_LINGER_S, transport.close)
            return
        self._uid = uid
        self._door._pipes.add(self)
        transport.pause_reading()
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        task = asyncio.get_running_loop().create_task(self._connect())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            inner, _ = await loop.create_unix_connection(lambda: _Inner(self), str(self._door._inner))
        except OSError:
            self.close()
            return
        if self._closed:
            inner.close()
            return
        assert isinstance(inner, asyncio.Transport)
        inner.set_write_buffer_limits(high=_HIGH_WATER)
        self._inner = inner
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.write(data)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_reading()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 -- either side ending ends both
        self.close()

    def to_client(self, data: bytes) -> None:
        """Bytes from gRPC for this client."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def pause_inner(self, paused: bool) -> None:
        """GRPC's side is full (or has room again): stop (or resume) reading from the client."""
        if self._transport is not None and not self._transport.is_closing():
            if paused:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def close(self) -> None:
        """Close both sides once and give the connection back to the uid's count."""
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        if self._inner is not None:
            self._inner.close()
        if self._uid is not None:
            self._door._pipes.discard(self)
            self._door.left(self._uid)


class _Inner(asyncio.Protocol):
    """The door's connection to gRPC's private socket for one client."""

    def __init__(self, client: _Client) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client.to_client(data)

    def pause_writing(self) -> None:
        self._client.pause_inner(paused=True)

    def resume_writing(self) -> None:
        self._client.pause_inner(paused=False)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 -- either side ending ends both
        self._client.close()

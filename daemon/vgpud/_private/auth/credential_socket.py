"""The credential socket: the kernel tells vgpud who connected, vgpud answers with a signed credential.

A plain Unix socket; the credential covers the peer's uid, gids and pid (see credentials.py).

grpc-python does not expose a connection's peer credentials, so the gRPC socket itself cannot say who is
calling; this socket can (SO_PEERCRED, SO_PEERGROUPS). Each connection costs a few getsockopt calls and one
HMAC; at most `max_clients` are served at once and a client that does not read its answer within a second is
dropped, so a flood cannot hold the daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, Final

import structlog

from vgpud._private.auth.credentials import MAX_GIDS, CredentialKey

log = structlog.get_logger("vgpud.auth")

SO_PEERGROUPS: Final = int(getattr(socket, "SO_PEERGROUPS", 59))
"""Linux 4.13+ (59 on x86 and arm); Python's socket module does not always export it."""
_WRITE_TIMEOUT_S: Final = 1.0
_UCRED: Final = struct.Struct("3i")


def peer_credentials(sock: Any) -> tuple[int, int, int, tuple[int, ...]]:
    """(pid, uid, gid, supplementary gids) of the process at the other end of a connected Unix socket."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid, _peer_groups(sock, pid)


def _peer_groups(sock: Any, pid: int) -> tuple[int, ...]:
    """The peer's supplementary groups from the kernel; /proc as a fallback on kernels without SO_PEERGROUPS."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GIDS)
    except OSError:
        return _proc_groups(pid)
    count = len(raw) // 4
    return struct.unpack(f"{count}I", raw[: count * 4])


def _proc_groups(pid: int) -> tuple[int, ...]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ()
    for line in status.splitlines():
        if line.startswith("Groups:"):
            return tuple(int(g) for g in line.split()[1:][:MAX_GIDS])
    return ()


class CredentialSocket:
    """Serves credentials on `path` (mode 0666: every local user may ask, the kernel says who asked)."""

    def __init__(self, path: Path, key: CredentialKey, ttl_s: float, *, max_clients: int = 64) -> None:
        self.path = path
        self._key = key
        self._ttl_s = ttl_s
        self._slots = asyncio.Semaphore(max_clients)
        self._server: asyncio.AbstractServer | None = None
        self.served = 0
        """Credentials minted (for tests and the security check)."""

    async def start(self) -> None:
        """Listen; a stale socket file (from a crash) is replaced, since the gRPC socket next to it was free."""
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), backlog=128)
        os.chmod(self.path, 0o666)  # noqa: S103, PTH101 -- every local user may ask; the kernel says who asked

    async def stop(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()
            return
        async with self._slots:
            try:
                pid, uid, gid, groups = peer_credentials(writer.get_extra_info("socket"))
                gids = (gid, *(g for g in groups if g != gid))
                credential = self._key.mint(uid, gids, pid, time.time() + self._ttl_s)
                self.served += 1
                writer.write(json.dumps({"credential": credential, "expires_in_s": self._ttl_s}).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), _WRITE_TIMEOUT_S)
            except (OSError, TimeoutError, struct.error) as exc:
                log.debug("credential request dropped", error=str(exc))
            finally:
                writer.close()

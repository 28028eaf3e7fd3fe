"""Let the node daemon find this process: an abstract unix socket that names the leases the process holds.

The watchdog must know which host processes belong to a lease (to see their GPU use, and to stop them when
the lease is revoked). A process that acquired its lease itself has no VGPU_LEASE_ID in its environment, so it
says where it listens in its heartbeats; the daemon connects, the kernel tells it the listener's host pid and
uid (SO_PEERCRED, correct across PID namespaces), and the process answers with the SHA-256 of each lease
token it holds. A lease's reports can so only ever point the watchdog at processes that hold that lease.
Linux only; elsewhere nothing is offered and the watchdog relies on the environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import sys
import threading
from typing import Final

log = logging.getLogger("vgpu")

PREFIX: Final = "vgpu-process-"
"""Every identity socket name starts with this; the daemon connects to nothing else."""


class ProcessIdentity:
    """The process-wide identity socket and the digests of the tokens this process holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._name: str | None = None
        self._failed = False

    def hold(self, token: str) -> str | None:
        """Answer for this lease token from now on; the socket name to report (None where unsupported)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            self._held[digest] = self._held.get(digest, 0) + 1
            return self._listen_locked()

    def drop(self, token: str) -> None:
        """Stop answering for this lease token (the lease ended or is no longer followed)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            left = self._held.get(digest, 0) - 1
            if left > 0:
                self._held[digest] = left
            else:
                self._held.pop(digest, None)

    def _answer(self) -> bytes:
        with self._lock:
            return "".join(f"{digest}\n" for digest in self._held).encode()

    def _listen_locked(self) -> str | None:
        if self._name is not None or self._failed:
            return self._name
        if not sys.platform.startswith("linux"):
            self._failed = True
            return None
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind("\0" + name)
            server.listen(16)
        except OSError as exc:
            server.close()
            self._failed = True
            log.warning("vgpu: no identity socket for the node watchdog (%s); it will rely on the environment", exc)
            return None
        threading.Thread(target=self._serve, args=(server,), name="vgpu-identity", daemon=True).start()
        self._name = name
        return name

    def _serve(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the daemon hung up early: nothing to answer
                conn.settimeout(1.0)
                conn.sendall(self._answer())


_IDENTITY = ProcessIdentity()
_IDENTITY_PID = os.getpid()


def identity() -> ProcessIdentity:
    """This process's identity (a fresh one in a forked child: the parent's socket is not its own)."""
    global _IDENTITY, _IDENTITY_PID
    if os.getpid() != _IDENTITY_PID:
        _IDENTITY, _IDENTITY_PID = ProcessIdentity(), os.getpid()
    return _IDENTITY

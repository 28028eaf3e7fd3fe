"""The client half of local identity: fetch a credential from vgpud's credential socket, keep it, renew it.

vgpud learns who connected to its credential socket from the kernel and answers with a short-lived signed
credential; calls on the gRPC socket carry it as `vgpu-credential` metadata. It is kept in this process's
memory only (never in the environment or on disk) and renewed when a third of its life is left.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from vgpu._private import reasons

RENEW_REASONS: Final = frozenset({reasons.CREDENTIAL_EXPIRED, reasons.CREDENTIAL_INVALID})
"""Refusals a fresh credential can cure."""
METADATA_KEY: Final = "vgpu-credential"
"""Call metadata that carries the credential."""
CREDENTIAL_SUFFIX: Final = ".cred"
_MAX_ANSWER: Final = 8192
Metadata = tuple[tuple[str, str], ...]


class CredentialError(Exception):
    """The credential socket did not answer with a credential; the message says what to check."""


def credential_socket_path(socket_path: Path) -> Path:
    """Where vgpud mints credentials: beside its gRPC socket (`vgpud.sock` -> `vgpud.sock.cred`)."""
    return socket_path.with_name(socket_path.name + CREDENTIAL_SUFFIX)


def socket_of(target: str) -> Path | None:
    """The Unix socket path of a gRPC target ('unix:///path'), None for TCP targets."""
    if not target.startswith("unix:"):
        return None
    return Path("/" + target[len("unix:") :].lstrip("/"))


def _parse(raw: bytes, path: Path) -> tuple[str, float]:
    try:
        answer = json.loads(raw)
        credential, ttl = str(answer["credential"]), float(answer["expires_in_s"])
    except (ValueError, KeyError, TypeError):
        raise CredentialError(f"the credential socket {path} answered something that is not a credential") from None
    return credential, ttl


def fetch(path: Path, timeout: float) -> tuple[str, float]:
    """(credential, seconds it lives) from the credential socket at `path` (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            chunks: list[bytes] = []
            while sum(len(c) for c in chunks) < _MAX_ANSWER:
                chunk = sock.recv(_MAX_ANSWER)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            raise CredentialError(f"cannot get a credential from {path}: {exc.strerror or exc}") from None
    return _parse(b"".join(chunks), path)


async def fetch_async(path: Path, timeout: float) -> tuple[str, float]:
    """The asyncio twin of `fetch`."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                raw = await reader.read(_MAX_ANSWER)
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise CredentialError(f"cannot get a credential from {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return _parse(raw, path)


class LocalCredential:
    """The credential for one daemon's socket, renewed when a third of its life is left. Thread-safe.

    Where the daemon has no credential socket (an older vgpud, or one started without authentication) calls
    go without one, and the daemon's refusal, if any, says what is missing.
    """

    def __init__(self, socket_path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = credential_socket_path(socket_path)
        self._clock = clock
        self._lock = threading.Lock()
        self._fetching = threading.Lock()
        """One fetch at a time: a thousand concurrent first calls share one credential, not a thousand connects."""
        self._fetching_async: asyncio.Lock | None = None
        self._value: str | None = None
        self._renew_at = 0.0

    def _keep(self, credential: str, ttl: float) -> Metadata:
        with self._lock:
            self._value = credential
            self._renew_at = self._clock() + ttl * 2 / 3
        return ((METADATA_KEY, credential),)

    def _fresh(self) -> Metadata | None:
        with self._lock:
            if self._value is not None and self._clock() < self._renew_at:
                return ((METADATA_KEY, self._value),)
        return None

    def metadata(self, timeout: float) -> Metadata:
        """Call metadata carrying a valid credential (blocking fetch when due); empty without a socket."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        if not self.path.exists():
            return ()
        if not self._fetching.acquire(timeout=max(timeout, 0.0)):
            raise CredentialError(f"cannot get a credential from {self.path}: another fetch did not finish in time")
        try:
            return self._fresh() or self._keep(*fetch(self.path, timeout))
        finally:
            self._fetching.release()

    async def metadata_async(self, timeout: float) -> Metadata:
        """The asyncio twin of `metadata`."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        if not self.path.exists():
            return ()
        if self._fetching_async is None:
            self._fetching_async = asyncio.Lock()
        try:
            async with asyncio.timeout(timeout):
                await self._fetching_async.acquire()
        except TimeoutError:
            raise CredentialError(
                f"cannot get a credential from {self.path}: another fetch did not finish in time"
            ) from None
        try:
            return self._fresh() or self._keep(*await fetch_async(self.path, timeout))
        finally:
            self._fetching_async.release()

    def drop_if_stale(self, reason: str) -> bool:
        """Whether a refusal with `reason` means this credential went stale; if so it is dropped for a retry.

        Stale: expired, or the daemon's key was replaced (a new state dir).
        """
        return reason in RENEW_REASONS and self.forget()

    def forget(self) -> bool:
        """Drop the credential (the daemon refused it as expired or unknown); whether there was one to drop."""
        with self._lock:
            held, self._value = self._value is not None, None
        return held

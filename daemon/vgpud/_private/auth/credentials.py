"""Local credentials: what vgpud hands a process over its credential socket, and checks on every call.

A credential says "the kernel reported uid U, gids G and pid P on the socket, until time T" and carries an
HMAC-SHA256 over that with a key only this vgpud holds (the MUNGE pattern Slurm uses). Clients send it as
the `vgpu-credential` call metadata; a changed field, another daemon's key or a passed expiry is refused.
It is a bearer token for its short life: it never leaves the process that fetched it (not in the
environment, not on disk), and a child process fetches its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vgpu._private import reasons
from vgpu._private.secret_files import write_secret
from vgpud._private.refusal import Refusal

VERSION: Final = "v1"
KEY_BYTES: Final = 32
MAX_GIDS: Final = 256
"""More supplementary groups than this are not carried (Linux allows 65536; real hosts have a few dozen)."""
MAX_LENGTH: Final = 4096
"""Longest credential accepted: a garbage header costs nothing to refuse."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid credential proves."""

    uid: int
    gids: tuple[int, ...]
    pid: int
    expires_at: float
    """Unix time after which the credential is refused."""


class CredentialKey:
    """The secret that signs credentials: 32 random bytes in a 0600 file under a 0700 directory.

    Kept across restarts so that credentials in running clients stay valid when the daemon restarts.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"a credential key is {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = secret
        self.key_id = hashlib.sha256(b"vgpu-credential-key-id" + secret).hexdigest()[:8]
        """Which key signed a credential: one of another daemon is refused as such, not as forged."""

    @classmethod
    def load_or_create(cls, path: Path) -> CredentialKey:
        """The key in `path`, made on first start; refuses a key file others may read."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            write_secret(path, secrets.token_bytes(KEY_BYTES))
            raw = path.read_bytes()
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {mode:o}): chmod 600 it, or delete it")
        return cls(raw)

    def mint(self, uid: int, gids: Sequence[int], pid: int, expires_at: float) -> str:
        """A credential for what the kernel reported."""
        body = _body(
            self.key_id, uid, gids[:MAX_GIDS], pid, expires_ms=int(expires_at * 1000), nonce=secrets.token_hex(4)
        )
        return f"{body}.{self._mac(body)}"

    def verify(self, credential: str, now: float) -> Claims:
        """What `credential` proves; Refusal(CREDENTIAL_INVALID / CREDENTIAL_EXPIRED) otherwise."""
        if len(credential) > MAX_LENGTH or not credential.isascii():
            raise _invalid("it is not a vgpu credential")
        body, _, mac = credential.rpartition(".")
        fields = body.split(".")
        if len(fields) != 7 or fields[0] != VERSION:  # noqa: PLR2004 -- version, key, uid, gids, pid, expiry, nonce
            raise _invalid("it is not a vgpu credential of this version")
        if fields[1] != self.key_id:
            raise _invalid("it was minted by another vgpud (a credential is good only at the daemon that made it)")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise _invalid("its signature does not match (altered or forged)")
        try:
            uid, pid, expires_ms = int(fields[2]), int(fields[4]), int(fields[5])
            gids = tuple(int(g) for g in fields[3].split(",") if g)
        except ValueError:
            raise _invalid("a field is not a number") from None
        expires_at = expires_ms / 1000
        if now >= expires_at:
            raise Refusal(
                reasons.CREDENTIAL_EXPIRED,
                f"the vgpu credential expired {now - expires_at:.0f}s ago; fetch a new one (the SDK and vgpuctl do)",
            )
        return Claims(uid=uid, gids=gids, pid=pid, expires_at=expires_at)

    def _mac(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()


def _body(key_id: str, uid: int, gids: Sequence[int], pid: int, *, expires_ms: int, nonce: str) -> str:
    """The signed part; the nonce makes every credential distinct (audit records and logs can tell them apart)."""
    return f"{VERSION}.{key_id}.{uid}.{','.join(str(g) for g in gids)}.{pid}.{expires_ms}.{nonce}"


def _invalid(why: str) -> Refusal:
    return Refusal(reasons.CREDENTIAL_INVALID, f"the vgpu credential was refused: {why}")

"""The door every RPC passes: who is calling (credential or certificate), and whether the table lets them.

`admit` runs first in every handler guard (services/status.py); the identity it proves is what handlers use
for ownership, project membership and the audit trail, through `caller()`.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

import grpc

from vgpu._private import reasons
from vgpu._private.local_credential import METADATA_KEY
from vgpud._private.auth.credentials import CredentialKey
from vgpud._private.auth.identity import Identity, Role
from vgpud._private.auth.local_users import LocalUsers
from vgpud._private.auth.rules import rule_for, short
from vgpud._private.auth.server_tls import ServerTls
from vgpud._private.refusal import Refusal

Ctx = grpc.aio.ServicerContext[Any, Any]

_CALLER: contextvars.ContextVar[Identity] = contextvars.ContextVar("vgpu_caller")

UNAUTHENTICATED_ADMIN = Identity(role=Role.ADMIN, name="unauthenticated", peer="unix")
"""Every caller of a daemon started with --insecure-no-auth (simulated GPUs only: benchmarks' baseline)."""


def caller() -> Identity:
    """The verified caller of the RPC being handled (set by the guard before the handler runs)."""
    return _CALLER.get()


def current_caller() -> Identity | None:
    """The caller if the gate got as far as knowing them (None when authentication itself failed)."""
    return _CALLER.get(None)


class Gate:
    """Authenticates callers and applies the authorization table."""

    def __init__(
        self,
        *,
        key: CredentialKey | None,
        users: LocalUsers,
        tls: ServerTls | None = None,
        enabled: bool = True,
    ) -> None:
        self._key = key
        self._users = users
        self.tls = tls
        self.enabled = enabled

    async def admit(self, method: str, context: Ctx) -> Identity:
        """The caller of `method` if the table allows them; Refusal (UNAUTHENTICATED / PERMISSION_DENIED) if not."""
        rule = rule_for(method)
        if rule is None:
            raise Refusal(reasons.ROLE_NOT_ALLOWED, f"{short(method)} has no authorization rule: nobody may call it")
        identity = await self.identify(context) if self.enabled else UNAUTHENTICATED_ADMIN
        _CALLER.set(identity)
        if identity.role not in rule.roles:
            allowed = " or ".join(sorted(str(r) for r in rule.roles))
            raise Refusal(
                reasons.ROLE_NOT_ALLOWED,
                f"{short(method)} is for the {allowed} role; you are {identity.name} ({identity.role}): "
                "ask a pool admin",
            )
        return identity

    async def identify(self, context: Ctx) -> Identity:
        """Who is calling: a verified client certificate (TCP), else the credential's kernel-reported uid (Unix)."""
        peer = context.peer() or ""
        auth = context.auth_context()
        pem = list(auth.get("x509_pem_cert") or ())
        if pem and self.tls is not None:
            return self.tls.identity(pem[0], peer)
        if not peer.startswith("unix:"):
            raise Refusal(reasons.CERTIFICATE_INVALID, "TCP calls need a client certificate (mutual TLS)")
        credential = _metadata(context, METADATA_KEY)
        if credential is None:
            raise Refusal(
                reasons.CREDENTIAL_MISSING,
                "the call carried no vgpu credential: use the vgpu SDK or vgpuctl, which fetch one from the "
                "daemon's credential socket (<socket>.cred) and send it as vgpu-credential metadata",
            )
        if self._key is None:
            raise Refusal(reasons.CREDENTIAL_INVALID, "this vgpud mints no credentials")
        claims = self._key.verify(credential, time.time())
        return await self._users.identity(claims)


def _metadata(context: Ctx, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None

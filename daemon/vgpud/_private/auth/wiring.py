"""The authentication parts of one vgpud, built from its config and started and stopped with it.

The credential key lives in `<state dir>/auth/` (0700, key 0600); the credential socket sits beside the gRPC
socket; the TCP door's TLS files are checked before the daemon serves anything (exit code 3 on a bad file).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from vgpu._private.local_credential import credential_socket_path
from vgpud._private.auth.access import Access
from vgpud._private.auth.audit import AuditTrail
from vgpud._private.auth.audit_records import AuditKeys
from vgpud._private.auth.credential_socket import CredentialSocket
from vgpud._private.auth.credentials import CredentialKey
from vgpud._private.auth.gate import Gate
from vgpud._private.auth.local_users import LocalUsers
from vgpud._private.auth.server_tls import ServerTls, TlsFilesError
from vgpud._private.config import DaemonConfig
from vgpud._private.metrics import DaemonMetrics
from vgpud._private.node_parts import StartupError
from vgpud._private.store.base import Store

log = structlog.get_logger("vgpud.auth")

KEY_FILE = "credential.key"


@dataclass(slots=True)
class AuthParts:
    """What the servicers and the gRPC server need to know who is calling."""

    gate: Gate
    access: Access
    audit: AuditTrail
    tls: ServerTls | None
    credential_socket: CredentialSocket | None

    async def start(self, stopping: asyncio.Event) -> asyncio.Task[None]:
        """Open the credential socket; the audit writer's task (to cancel at stop)."""
        if self.credential_socket is not None:
            try:
                await self.credential_socket.start()
            except OSError as exc:
                raise StartupError(f"cannot listen on {self.credential_socket.path}: {exc.strerror or exc}") from None
        return asyncio.get_running_loop().create_task(self.audit.run(stopping), name="audit")

    async def stop(self) -> None:
        """Close the credential socket (the audit writer flushes when `stopping` is set)."""
        if self.credential_socket is not None:
            await self.credential_socket.stop()

    def reload_tls(self) -> None:
        """SIGHUP: re-read the TLS files, keeping the old ones when the new ones are bad."""
        if self.tls is None:
            log.info("SIGHUP: no TLS files to reload (no --listen)")
            return
        self.tls.reload()


def build_auth(config: DaemonConfig, store: Store, metrics: DaemonMetrics, timeout: float) -> AuthParts:
    """The parts for `config`; StartupError when the key or TLS files cannot be used."""
    tls = None
    if config.tcp_listen is not None:
        cert, key, ca = config.tls.cert_file, config.tls.key_file, config.tls.client_ca_file
        if cert is None or key is None or ca is None:  # config validation makes this unreachable
            raise StartupError("TCP is served only with mutual TLS: set --tls-cert, --tls-key and --tls-client-ca")
        try:
            tls = ServerTls(cert, key, ca, config.etcd.cluster)
        except TlsFilesError as exc:
            raise StartupError(str(exc)) from None
    users = LocalUsers(config.auth.admin_groups)
    credential_socket: CredentialSocket | None = None
    credential_key: CredentialKey | None = None
    if config.auth.enabled:
        try:
            credential_key = CredentialKey.load_or_create(config.state_dir / "auth" / KEY_FILE)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use the credential key in {config.state_dir / 'auth'}: {exc}") from None
        credential_socket = CredentialSocket(
            credential_socket_path(config.socket_path), credential_key, config.auth.credential_ttl_s
        )
    else:
        log.warning("authentication is OFF: every local caller is an admin (--insecure-no-auth, simulated GPUs only)")
    audit = AuditTrail(
        store,
        AuditKeys(config.etcd.cluster),
        config.node_name,
        retention_days=config.audit.retention_days,
        timeout=timeout,
        on_refusal=metrics.count_refusal,
    )
    return AuthParts(
        gate=Gate(key=credential_key, users=users, tls=tls, enabled=config.auth.enabled),
        access=Access(open_default_project=config.auth.open_default_project),
        audit=audit,
        tls=tls,
        credential_socket=credential_socket,
    )

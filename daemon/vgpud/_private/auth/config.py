"""The [auth], [tls] and [audit] tables of vgpud's config: who is admin, the TCP door's files, the audit trail."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

_GROUP_RE: Final = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,62}")
_TTL_RANGE_S: Final = (10.0, 86400.0)
_RETENTION_RANGE_DAYS: Final = (1, 3650)
_MAX_GROUPS: Final = 100


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Identity and roles ([auth] table)."""

    enabled: bool = True
    """Authenticate every call. false is only for simulated GPUs without --listen (benchmarks' baseline): every
    local caller is then an admin."""
    admin_groups: tuple[str, ...] = ("vgpu-admin",)
    """Local groups whose members are admins (root always is); at most 100."""
    open_default_project: bool = True
    """Every user may acquire in the `default` project; false: only its members do."""
    credential_ttl_s: float = 300.0
    """How long a credential from the credential socket is good for; clients renew it at two thirds. 10 to
    86400 seconds."""


@dataclass(frozen=True, slots=True)
class TlsServerConfig:
    """The TCP listener's mutual TLS ([tls] table); required with `tcp_listen`. SIGHUP re-reads the files."""

    cert_file: Path | None = None
    """vgpud's server certificate (PEM, ECDSA P-256), e.g. a node certificate from `vgpuctl pki issue --host`."""
    key_file: Path | None = None
    """Its private key; must not be readable by others."""
    client_ca_file: Path | None = None
    """CA bundle that issued the client certificates (`vgpuctl pki init`'s ca.pem)."""


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit trail ([audit] table)."""

    retention_days: int = 90
    """How long audit records stay in etcd (every daemon prunes older ones); 1 to 3650 days."""


_Fail = Callable[[str, str], NoReturn]


def validate_auth(
    auth: AuthConfig, tls: TlsServerConfig, audit: AuditConfig, *, tcp: bool, sim: bool, fail: _Fail
) -> None:
    """Fail with the key and what to change for values vgpud cannot serve safely with."""
    if not auth.enabled and not sim:
        fail("auth.enabled", "false is allowed only with simulated GPUs (--sim): a real pool always authenticates")
    if not auth.enabled and tcp:
        fail("auth.enabled", "false cannot go with tcp_listen: TCP is served only with mutual TLS")
    if len(auth.admin_groups) > _MAX_GROUPS:
        fail("auth.admin_groups", f"{len(auth.admin_groups)} groups is more than {_MAX_GROUPS}")
    for group in auth.admin_groups:
        if not _GROUP_RE.fullmatch(group):
            fail("auth.admin_groups", f"{group!r} is not a group name (1 to 63 of A-Z a-z 0-9 . _ -)")
    low, high = _TTL_RANGE_S
    if not low <= auth.credential_ttl_s <= high:
        fail("auth.credential_ttl_s", f"{auth.credential_ttl_s} must be from {low:g} to {high:g} seconds")
    files = {
        "tls.cert_file": (tls.cert_file, "--tls-cert"),
        "tls.key_file": (tls.key_file, "--tls-key"),
        "tls.client_ca_file": (tls.client_ca_file, "--tls-client-ca"),
    }
    given = [key for key, (value, _flag) in files.items() if value is not None]
    if tcp and len(given) < len(files):
        missing = ", ".join(f"{key} ({flag})" for key, (_value, flag) in files.items() if key not in given)
        fail("tcp_listen", f"TCP is served only with mutual TLS: set {missing}")
    if given and not tcp:
        fail(given[0], "TLS files are for the TCP listener: set tcp_listen (--listen) too, or remove them")
    low_days, high_days = _RETENTION_RANGE_DAYS
    if not low_days <= audit.retention_days <= high_days:
        fail("audit.retention_days", f"{audit.retention_days} must be from {low_days} to {high_days} days")

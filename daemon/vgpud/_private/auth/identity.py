"""The verified caller of an RPC: a local uid proven by the kernel, or a client certificate proven by TLS.

Nothing here comes from a field the client fills in. Names are what ownership and project membership
compare: a local caller is named after its uid in this host's user database ("uid:N" when it has no entry),
a certificate holder by the name in its SPIFFE id; the two spaces meet on purpose (user "alice" on a host
and the certificate for alice are the same person), and "uid:N" cannot be a certificate name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """What a caller may do in general; the authorization table maps methods to the roles allowed."""

    ADMIN = "admin"
    USER = "user"
    NODE = "node"


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller."""

    role: Role
    name: str
    """User name (local: from the host's user database, "uid:N" without an entry; remote: the certificate's)."""
    groups: frozenset[str] = frozenset()
    """Group names: the host's names of the caller's gids, or the certificate's O= attributes."""
    uid: int | None = None
    """The caller's uid on this host (local callers only)."""
    gids: tuple[int, ...] = ()
    """Primary and supplementary gids as the kernel reported them (local callers only)."""
    pid: int = 0
    """The process that fetched the credential, as the kernel reported it (local callers only)."""
    spiffe_id: str = ""
    """The certificate's spiffe://cluster/role/name (remote callers only)."""
    peer: str = "unix"
    """"unix" or the TCP peer address, for the audit trail."""

    @property
    def local(self) -> bool:
        """Whether the kernel proved this identity (Unix socket) rather than a certificate."""
        return self.uid is not None

    @property
    def proof(self) -> str:
        """How the identity was proven, as owner records and audit records show it."""
        return f"local:uid={self.uid}" if self.uid is not None else self.spiffe_id

    @property
    def admin(self) -> bool:
        """Whether this caller may act on anything (leases of others, admin mutations)."""
        return self.role is Role.ADMIN

    def same_person(self, owner_name: str) -> bool:
        """Whether this caller is the user `owner_name` names (lease ownership)."""
        return bool(owner_name) and self.name == owner_name

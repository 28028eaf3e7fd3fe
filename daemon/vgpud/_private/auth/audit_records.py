"""Audit records as stored in etcd (`/vgpu-audit/<cluster>/<ms>-<node>-<seq>`): one JSON object each.

Keys sort by time, so a window is one range read and the retention one range delete, like usage buckets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Final

TIME_DIGITS: Final = 13
"""Milliseconds since the epoch, zero-padded: good until the year 2286."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited call (see admin.proto AuditRecord)."""

    time: float
    node: str
    user: str
    identity: str
    role: str
    method: str
    target: str
    outcome: str
    reason: str = ""
    message: str = ""
    peer: str = ""
    repeats: int = 0

    def to_json(self) -> bytes:
        """Serialise for etcd."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AuditEntry:
        """Parse what to_json wrote; unknown keys (from newer daemons) are ignored."""
        data: dict[str, Any] = json.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def matches(self, who: str) -> bool:
        """Whether the record is about identity `who`: a user name, "uid:N" or a SPIFFE id."""
        local = f"local:uid={who.removeprefix('uid:')}" if who.startswith("uid:") else ""
        return who in (self.user, self.identity) or (bool(local) and self.identity == local)


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """The audit prefix of one cluster: outside `/vgpu/<cluster>/` so the pool view's watch never carries it."""

    cluster: str

    @property
    def root(self) -> str:
        """Prefix of every audit record of the cluster."""
        return f"/vgpu-audit/{self.cluster}/"

    def at(self, millis: int) -> str:
        """The first key at or after `millis` (range reads and deletes start or end here)."""
        return f"{self.root}{millis:0{TIME_DIGITS}d}"

    def record(self, millis: int, node: str, seq: int) -> str:
        """The key of one record."""
        return f"{self.at(millis)}-{node}-{seq:08d}"

"""A request waiting in the pool-wide queue (key queue/<lease_id>), as the leader and the asking daemon see it.

The asking daemon writes it (bound to its node's etcd lease, so a dead daemon's waiters vanish); the
leader grants it by writing the lease and deleting this key in one fenced transaction, or refuses it by
writing the refusal here for the asking daemon to deliver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import LeaseState


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """The lease-to-be (state PENDING, no slices yet) plus where it may go and how it waits."""

    lease: LeaseRecord
    target_node: str
    """The node its slices must be on; empty: any node (the leader chooses)."""
    span: bool
    """A gang that may spread its slices over several nodes (only with any node)."""
    wait: bool
    """False: refuse at once when nothing fits instead of holding a place."""
    refusal_reason: str = ""
    """Set by the leader when it will never grant this request; the asking daemon delivers it."""
    refusal_message: str = ""

    @property
    def lease_id(self) -> str:
        """The id the granted lease will have."""
        return self.lease.id

    @property
    def refused(self) -> bool:
        """Whether the leader has answered with a refusal."""
        return bool(self.refusal_reason)

    def refuse(self, reason: str, message: str) -> QueuedRequest:
        """A copy carrying the leader's refusal."""
        return replace(self, refusal_reason=reason, refusal_message=message)

    def to_json(self) -> bytes:
        """Serialise for etcd."""
        data: dict[str, Any] = {
            "lease": json.loads(self.lease.to_json()),
            "target_node": self.target_node,
            "span": self.span,
            "wait": self.wait,
            "refusal_reason": self.refusal_reason,
            "refusal_message": self.refusal_message,
        }
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> QueuedRequest:
        """Parse what to_json wrote."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("queued request is not a JSON object")  # noqa: TRY004 -- callers catch ValueError
        lease = LeaseRecord.from_json(json.dumps(data["lease"]).encode())
        if lease.state is not LeaseState.PENDING:
            raise ValueError(f"queued request {lease.id} is {lease.state.value}, not pending")
        return cls(
            lease=lease,
            target_node=str(data.get("target_node", "")),
            span=bool(data.get("span", False)),
            wait=bool(data.get("wait", True)),
            refusal_reason=str(data.get("refusal_reason", "")),
            refusal_message=str(data.get("refusal_message", "")),
        )

"""MIG instances as etcd records them inside a GPU's state: the slots they hold and who holds them.

A record exists from the moment a grant places an instance (CREATING) until the node daemon has destroyed
it, so its memory slices stay taken while the hardware catches up: two daemons never place overlapping
instances, and a lease that ends (or a node that is lost) frees no slot before the instance is gone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any


class MigState(enum.StrEnum):
    """Where one MIG instance stands (mirrors MigInstanceState in types.proto)."""

    CREATING = "creating"
    """Placed for a lease; the node daemon has yet to create it."""
    READY = "ready"
    """Created and held by a lease."""
    WARM = "warm"
    """Created, held by no lease, kept for the next request of its profile."""
    RELEASING = "releasing"
    """Its lease ended; the node daemon is destroying it."""
    FOREIGN = "foreign"
    """Found on the GPU but not created by vgpu: off limits, never destroyed."""


@dataclass(frozen=True, slots=True)
class MigSlot:
    """Where a MIG slice goes: profile and placement (what a claim carries)."""

    profile: str
    """Profile name such as "3g.40gb"."""
    profile_id: int
    """NVML's GPU instance profile id."""
    start: int
    """First memory slice."""
    size: int
    """Memory slices it spans."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"profile": self.profile, "profile_id": self.profile_id, "start": self.start, "size": self.size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigSlot:
        """Parse what to_dict wrote."""
        return cls(str(data["profile"]), int(data["profile_id"]), int(data["start"]), int(data["size"]))


@dataclass(frozen=True, slots=True)
class MigRecord:
    """One MIG instance on a GPU (CREATING until the node daemon has made it)."""

    slot: MigSlot
    state: MigState
    lease_id: str = ""
    """The lease it is (or was, while RELEASING) created for; empty when WARM or FOREIGN."""
    uuid: str = ""
    """"MIG-..." once created."""
    gpu_instance_id: int = -1
    """NVML's GPU instance id once created (what destroy needs)."""
    idle_since: float = 0.0
    """Wall time it became WARM (keep-warm expiry)."""

    @property
    def start(self) -> int:
        """First memory slice."""
        return self.slot.start

    @property
    def held(self) -> bool:
        """Bound to a live lease (CREATING or READY)."""
        return self.state in (MigState.CREATING, MigState.READY)

    def released(self) -> MigRecord:
        """This instance once its lease has ended: RELEASING (its slots stay taken until it is destroyed)."""
        return replace(self, state=MigState.RELEASING)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (inside a gpustate record)."""
        return {
            **self.slot.to_dict(),
            "state": self.state.value,
            "lease_id": self.lease_id,
            "uuid": self.uuid,
            "gi": self.gpu_instance_id,
            "idle_since": self.idle_since,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigRecord:
        """Parse what to_dict wrote."""
        return cls(
            slot=MigSlot.from_dict(data),
            state=MigState(data["state"]),
            lease_id=str(data.get("lease_id", "")),
            uuid=str(data.get("uuid", "")),
            gpu_instance_id=int(data.get("gi", -1)),
            idle_since=float(data.get("idle_since", 0.0)),
        )


def overlapping(records: tuple[MigRecord, ...]) -> list[tuple[MigRecord, MigRecord]]:
    """Pairs of records whose memory slices overlap (an invariant violation)."""
    ordered = sorted(records, key=lambda r: r.slot.start)
    return [
        (a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :] if b.slot.start < a.slot.start + a.slot.size
    ]

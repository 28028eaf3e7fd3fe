"""The slices a grant writes into its lease record, from the placement that made it."""

from __future__ import annotations

from typing import Any

from vgpud._private.core.lease_record import SliceRecord
from vgpud._private.core.model import Claim
from vgpud._private.core.placement import Placement
from vgpud._private.grants.write_batch import Overlay


def slices_of(placement: Placement, overlay: Overlay | None = None) -> tuple[SliceRecord, ...]:
    """A placement's assignments as the slices a lease record holds (with the batch's staged MIG bindings)."""
    return tuple(
        SliceRecord(
            node=view.record.node,
            gpu_uuid=view.record.uuid,
            gpu_index=view.record.index,
            gpu_model=view.record.model,
            isolation=claim.isolation,
            memory_bytes=claim.memory_bytes,
            compute_milli=claim.compute_milli,
            **_mig_fields(view.record.uuid, claim, overlay),
        )
        for view, claim in placement.assignments
    )


def _mig_fields(uuid: str, claim: Claim, overlay: Overlay | None) -> dict[str, Any]:
    """The MIG part of a slice: its slot, and the instance's UUID when a warm one was bound."""
    if claim.mig is None:
        return {}
    bound = overlay.gpu_state(uuid).mig_at(claim.mig.start) if overlay is not None else None
    return {
        "mig_profile": claim.mig.profile,
        "mig_start": claim.mig.start,
        "mig_size": claim.mig.size,
        "mig_uuid": bound.uuid if bound is not None and bound.lease_id == claim.lease_id else "",
    }

"""GPU mode changes in the books: when a GPU may switch, and the guarded write that switches it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from vgpu._private import reasons
from vgpud._private.core.mig_records import MigState
from vgpud._private.core.model import GpuMode, GpuRecord, GpuState
from vgpud._private.grants.write_batch import Overlay
from vgpud._private.refusal import Refusal


def mode_change(record: GpuRecord | None, uuid: str, mode: GpuMode) -> Callable[[Overlay], GpuState]:
    """The write that puts GPU `uuid` in `mode`; Refusal now for an unknown GPU or one that cannot run it."""
    if record is None:
        raise Refusal(reasons.GPU_NOT_FOUND, f"no GPU {uuid!r} is registered (see vgpuctl gpus)")
    if mode is GpuMode.MIG and not record.mig_capable:
        raise Refusal(
            reasons.INVALID_REQUEST, f"{record.model} GPUs cannot run MIG; modes for {uuid}: shared, exclusive"
        )

    def build(overlay: Overlay) -> GpuState:
        current = overlay.gpu_state(uuid)
        if current.mode is mode:
            return current
        holders = busy_with(current)
        if holders:
            raise Refusal(
                reasons.GPU_BUSY,
                f"GPU {uuid} is in use ({holders}); release or evict them first (vgpuctl leases --node "
                f"{record.node}), then switch it",
            )
        new_state = replace(current, mode=mode)
        overlay.put_gpu_state(uuid, new_state)
        return new_state

    return build


def switchable_now(state: GpuState) -> bool:
    """Idle and in shared or MIG mode: what auto mode may switch."""
    return not state.claims and not state.mig and state.mode in (GpuMode.SHARED, GpuMode.MIG)


def busy_with(state: GpuState) -> str:
    """What keeps a GPU from switching modes, in words; empty when nothing does (warm instances go)."""
    holders = sorted({c.lease_id for c in state.claims})
    parts = [f"{len(holders)} lease(s): {', '.join(holders[:5])}"] if holders else []
    foreign = [m for m in state.mig if m.state is MigState.FOREIGN]
    if foreign:
        parts.append(f"{len(foreign)} MIG instance(s) vgpu did not create: destroy them with nvidia-smi mig")
    releasing = [
        m for m in state.mig if m.state in (MigState.RELEASING, MigState.CREATING) and m.lease_id not in holders
    ]
    if releasing:
        parts.append(f"{len(releasing)} MIG instance(s) still being destroyed: retry in a moment")
    return "; ".join(parts)

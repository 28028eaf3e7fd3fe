"""The answer to AdminService.PlanMigLayout: a declarative MIG layout against the pool as it is now. Pure.

The plan itself comes from `core.mig_layout`; this module only turns it into steps people can act on:
every step names its node, GPU, profile and start, and `blocked_by` says why it cannot be taken now
(a lease holds the instance, the instance is not vgpu's, the GPU is not in MIG mode yet). Nothing is
changed: the RPC is a dry run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2
from vgpud._private.core.mig_layout import Layout, LayoutError, Plan, Step, Wanted, parse_layout, plan
from vgpud._private.core.mig_placement import MigGpu, MigInstance, profile_of
from vgpud._private.core.mig_records import MigState
from vgpud._private.core.mig_slices import mig_gpu
from vgpud._private.core.model import GpuMode, GpuRecord, GpuState
from vgpud._private.refusal import Refusal

CREATE: Final = admin_pb2.MigPlanStep.ACTION_CREATE
DESTROY: Final = admin_pb2.MigPlanStep.ACTION_DESTROY
KEEP: Final = admin_pb2.MigPlanStep.ACTION_KEEP

FOREIGN_BLOCK: Final = "not created by vgpu; never destroyed"
"""Why the plan cannot remove a foreign instance (an admin made it by hand, so only an admin removes it)."""


@dataclass(frozen=True, slots=True)
class _Gpu:
    """One MIG-capable GPU of the pool: its records and how MIG placement sees it."""

    record: GpuRecord
    state: GpuState
    mig: MigGpu


def plan_response(
    gpus: Sequence[tuple[GpuRecord, GpuState, bool]], layout_toml: str
) -> admin_pb2.PlanMigLayoutResponse:
    """Steps that turn the pool's MIG instances into the layout, per GPU destroy first, then create, then keep.

    `gpus` are (record, state, schedulable) of every GPU of the pool. A layout that cannot be read or met
    is refused with INVALID_REQUEST and the layout error's message (which names the line or the field).
    """
    try:
        layout = _by_uuid(parse_layout(layout_toml), [record for record, _, _ in gpus])
        pool = _mig_gpus(gpus, layout)
        result = plan(layout, [gpu.mig for gpu in pool])
    except LayoutError as exc:
        raise Refusal(reasons.INVALID_REQUEST, str(exc)) from None
    return admin_pb2.PlanMigLayoutResponse(steps=list(_steps(pool, layout, result)))


def _by_uuid(layout: Layout, records: Sequence[GpuRecord]) -> Layout:
    """The layout with [gpus."NODE:INDEX"] entries keyed by that GPU's uuid (uuids never hold a ':')."""
    if not any(":" in key for key in layout.by_gpu):
        return layout
    at = {f"{record.node}:{record.index}": record.uuid for record in records}
    by_gpu: dict[str, tuple[Wanted, ...]] = {}
    for key, wanted in layout.by_gpu.items():
        uuid = at.get(key, key) if ":" in key else key
        if ":" in uuid:
            node, _, index = key.rpartition(":")
            indexes = sorted(record.index for record in records if record.node == node)
            where = f"its GPUs: {', '.join(map(str, indexes))}" if indexes else "no such node in the pool"
            raise LayoutError(f'gpus."{key}": no GPU {index} on node {node} ({where}); see vgpuctl gpus')
        if uuid in by_gpu:
            raise LayoutError(f'gpus."{key}": GPU {uuid} is named twice (by its uuid and as NODE:INDEX)')
        by_gpu[uuid] = wanted
    return replace(layout, by_gpu=by_gpu)


def _mig_gpus(gpus: Sequence[tuple[GpuRecord, GpuState, bool]], layout: Layout) -> list[_Gpu]:
    """The MIG-capable GPUs, ordered by node and index; a [gpus.UUID] entry for another GPU is an error."""
    pool: list[_Gpu] = []
    for record, state, schedulable in sorted(gpus, key=lambda g: (g[0].node, g[0].index, g[0].uuid)):
        converted = mig_gpu(record, state, schedulable=schedulable)
        if converted is not None:
            pool.append(_Gpu(record, state, converted))
        elif record.uuid in layout.by_gpu:
            raise LayoutError(
                f'gpus."{record.uuid}": the GPU (node {record.node}, index {record.index}) is a '
                f"{record.model or 'GPU of unknown model'}, which has no MIG"
            )
    return pool


def _matched(gpu: MigGpu, layout: Layout) -> bool:
    """True when the layout says what `gpu` should hold (by its uuid or by its model)."""
    return gpu.uuid in layout.by_gpu or gpu.model.key in layout.by_model


def _steps(pool: Sequence[_Gpu], layout: Layout, result: Plan) -> Iterable[admin_pb2.MigPlanStep]:
    """Per GPU in pool order: destroy steps (and conflicts) by start, creates in plan order, kept instances."""
    for gpu in pool:
        uuid = gpu.record.uuid
        conflicts = _on(result.conflicts, uuid)
        destroys = sorted([*conflicts, *_on(result.destroy, uuid)], key=lambda s: s.instance.start)
        creates = _on(result.create, uuid)
        gone = {s.instance.start for s in destroys}
        waits = f"waits for {_describe(conflicts[0])}: {_conflict_reason(gpu, conflicts[0])}" if conflicts else ""
        not_mig = _not_mig_reason(gpu) if uuid in result.enable_mig else ""
        for step in destroys:
            blocked = _conflict_reason(gpu, step) if step in conflicts else waits
            yield _message(gpu, DESTROY, step.profile, step.instance, blocked)
        for step in creates:
            yield _message(gpu, CREATE, step.profile, step.instance, waits or not_mig)
        if _matched(gpu.mig, layout):
            for inst in sorted(gpu.mig.instances, key=lambda i: i.start):
                if inst.start not in gone:
                    yield _message(gpu, KEEP, _profile_name(gpu.mig, inst), inst, "")


def _on(steps: tuple[Step, ...], uuid: str) -> list[Step]:
    return [s for s in steps if s.gpu_uuid == uuid]


def _describe(step: Step) -> str:
    """'3g.40gb@0': an instance as a layout file would write it."""
    return f"{step.profile}@{step.instance.start}"


def _profile_name(gpu: MigGpu, inst: MigInstance) -> str:
    profile = profile_of(gpu.model, inst)
    return profile.name if profile is not None else f"?{inst.profile_id}"


def _conflict_reason(gpu: _Gpu, step: Step) -> str:
    """Why an instance the layout removes cannot go now: its lease, or that vgpu never made it."""
    holder = step.instance.lease_id
    record = gpu.state.mig_at(step.instance.start)
    if record is not None and record.state is MigState.FOREIGN:
        return FOREIGN_BLOCK
    if record is not None and record.state is MigState.RELEASING:
        return f"lease {record.lease_id or '?'} ended; the node daemon is still destroying the instance"
    if record is not None and record.lease_id:
        return f"lease {record.lease_id}"
    return f"lease {holder}"


def _not_mig_reason(gpu: _Gpu) -> str:
    """Why instances cannot be created on a GPU the layout wants in MIG mode."""
    if gpu.state.mode is GpuMode.MIG:
        return "MIG mode pending: the node daemon has yet to switch the hardware"
    return f"GPU not in MIG mode: vgpuctl gpu mode {gpu.record.uuid} mig"


def _message(
    gpu: _Gpu, action: admin_pb2.MigPlanStep.Action.ValueType, profile: str, inst: MigInstance, blocked_by: str
) -> admin_pb2.MigPlanStep:
    return admin_pb2.MigPlanStep(
        action=action,
        node=gpu.record.node,
        gpu_uuid=gpu.record.uuid,
        profile=profile,
        start=inst.start,
        blocked_by=blocked_by,
    )

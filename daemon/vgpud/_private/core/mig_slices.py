"""MIG slices for a request: GPU views in, claims with MIG slots out. Pure, like placement.py.

A MIG request names a profile, or gives memory (and maybe compute) for which each GPU model's smallest
holding profile is taken. A warm instance of the profile is reused before a new one is placed; new ones go
where `mig_placement.choose` keeps the largest future profiles placeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from vgpu._private.units import MILLI_PER_GPU
from vgpud._private.backend.geometry import GpuModel, MigProfile, UnknownModelError, lookup_model
from vgpud._private.core import mig_placement
from vgpud._private.core.mig_placement import MigGpu, MigInstance, MigProfileError
from vgpud._private.core.mig_records import MigRecord, MigSlot, MigState
from vgpud._private.core.model import Claim, GpuMode, GpuRecord, GpuState, Isolation, ShapeRequest
from vgpud._private.core.slice_views import GpuView, Placement, Unplaceable

_FOREIGN_HOLDER = "(not vgpu's)"
"""What a foreign instance shows as its holder, so a layout plan never offers to destroy it."""


def model_of(record: GpuRecord) -> GpuModel | None:
    """The geometry of a GPU's model; None for a model the table lacks (treated as not MIG-capable)."""
    try:
        return lookup_model(record.model)
    except UnknownModelError:
        return None


def _holder(record: MigRecord) -> str:
    if record.state is MigState.FOREIGN:
        return _FOREIGN_HOLDER
    if record.state is MigState.WARM:
        return ""
    return record.lease_id or f"({record.state.value})"


def mig_gpu(record: GpuRecord, state: GpuState, *, schedulable: bool = True) -> MigGpu | None:
    """A GPU as MIG placement sees it (None when its model has no MIG): MIG is usable once mode and hardware agree."""
    model = model_of(record)
    if model is None or not model.mig_capable:
        return None
    return MigGpu(
        uuid=record.uuid,
        model=model,
        mig_enabled=state.mode is GpuMode.MIG and record.mig_enabled,
        instances=tuple(MigInstance(m.slot.profile_id, m.slot.start, m.slot.size, _holder(m)) for m in state.mig),
        schedulable=schedulable,
    )


def profile_for(model: GpuModel, request: ShapeRequest) -> MigProfile:
    """The profile a request takes on this model (raises MigProfileError when none can serve it)."""
    if request.mig_profile:
        found = mig_placement.profile_named(model, request.mig_profile)
        if found is None:
            raise MigProfileError(
                mig_placement.MigErrorKind.PROFILE_NOT_HERE, f"{model.key} has no profile {request.mig_profile}"
            )
        return found
    return mig_placement.smallest_profile_for(model, request.memory_bytes, request.compute_milli or None)


def compute_share(model: GpuModel, profile: MigProfile) -> int:
    """The profile's SMs as milli-GPU of the model's SMs (what the claim books; at most 1000)."""
    return min(MILLI_PER_GPU, max(1, round(profile.sm_count * MILLI_PER_GPU / model.sm_count)))


@dataclass(frozen=True, slots=True)
class MigCandidate:
    """One GPU that could take the request now, with the claim it would make."""

    index: int
    claim: Claim
    stranded: int
    """Bytes of the instance beyond what was asked (0 with a named profile)."""


def _claim(lease_id: str, model: GpuModel, profile: MigProfile, start: int) -> Claim:
    slot = MigSlot(profile.name, profile.id, start, profile.memory_slices)
    return Claim(lease_id, profile.memory_bytes, compute_share(model, profile), Isolation.MIG, slot)


@dataclass(frozen=True, slots=True)
class _Profiles:
    """The profile the request takes on each GPU (None where its model has none that serves it), resolved once."""

    by_gpu: tuple[MigProfile | None, ...]
    first_error: MigProfileError | None

    @classmethod
    def of(cls, gpus: Sequence[MigGpu], request: ShapeRequest) -> _Profiles:
        found: list[MigProfile | None] = []
        first_error: MigProfileError | None = None
        for gpu in gpus:
            try:
                found.append(profile_for(gpu.model, request))
            except MigProfileError as exc:
                found.append(None)
                first_error = first_error or exc
        return cls(tuple(found), first_error)

    @property
    def serving(self) -> list[int]:
        """Indexes of the GPUs whose model has a profile for the request."""
        return [i for i, p in enumerate(self.by_gpu) if p is not None]

    def names(self) -> dict[str, list[int]]:
        """Per profile name, the indexes of the GPUs where the request takes it."""
        out: dict[str, list[int]] = {}
        for i, p in enumerate(self.by_gpu):
            if p is not None:
                out.setdefault(p.name, []).append(i)
        return out


def _choose_one(
    gpus: Sequence[MigGpu], profiles: _Profiles, request: ShapeRequest, lease_id: str
) -> MigCandidate | None:
    """Where one MIG slice of `request` goes now: a warm instance of its profile, else a new one; None: no room."""
    for index, gpu in enumerate(gpus):
        wanted = profiles.by_gpu[index]
        if wanted is None or not (gpu.mig_enabled and gpu.schedulable):
            continue
        for inst in gpu.instances:
            if inst.lease_id == "" and inst.profile_id == wanted.id:
                return MigCandidate(index, _claim(lease_id, gpu.model, wanted, inst.start), 0)
    best: MigCandidate | None = None
    for name, indexes in sorted(profiles.names().items()):
        choice = mig_placement.choose([gpus[i] for i in indexes], name)
        if choice is None:
            continue
        stranded = max(0, choice.profile.memory_bytes - request.memory_bytes) if not request.mig_profile else 0
        candidate = MigCandidate(
            indexes[choice.index], _claim(lease_id, choice.gpu.model, choice.profile, choice.start), stranded
        )
        if best is None or candidate.stranded < best.stranded:
            best = candidate
    return best


def _check_request(gpus: Sequence[MigGpu], profiles: _Profiles, request: ShapeRequest) -> None:
    """Raise MigProfileError when no GPU of `gpus` could ever serve the request (profile unknown, too big...)."""
    if request.mig_profile:
        mig_placement.check_name(gpus, request.mig_profile)
        return
    if not gpus:
        raise MigProfileError(
            mig_placement.MigErrorKind.NO_MIG_GPU,
            f"no GPU here is MIG-capable; MIG-capable models: {mig_placement.mig_model_keys()}",
        )
    if not profiles.serving and profiles.first_error is not None:
        raise profiles.first_error


def place_mig(request: ShapeRequest, views: Sequence[GpuView], lease_id: str) -> Placement | Unplaceable:
    """`request.count` MIG slices (several may share a GPU), or why not: never for a profile no GPU has."""
    eligible: list[tuple[GpuView, MigGpu]] = []
    for view in views:
        if request.gpu_models and view.record.model not in request.gpu_models:
            continue
        gpu = mig_gpu(view.record, view.state, schedulable=view.schedulable)
        if gpu is not None:
            eligible.append((view, gpu))
    gpus = [gpu for _, gpu in eligible]
    profiles = _Profiles.of(gpus, request)
    try:
        _check_request(gpus, profiles, request)
    except MigProfileError as exc:
        return Unplaceable(never=True, message=exc.message)
    serving = profiles.serving
    ever = sum(_capacity_when_empty(gpus[i], profiles.by_gpu[i]) for i in serving)
    if ever < request.count:
        return Unplaceable(
            never=True,
            message=f"{request.count} MIG slices of this shape need more room than all {len(serving)} "
            f"MIG-capable GPU(s) here have even when empty (at most {ever})",
        )
    if not any(eligible[i][0].state.mode is GpuMode.MIG or eligible[i][0].switchable for i in serving):
        names = ", ".join(view.record.uuid for view, _ in eligible[:4])
        return Unplaceable(
            never=True,
            message=f"no GPU here is in MIG mode; an admin can switch an idle one: vgpuctl gpu mode GPU mig "
            f"(MIG-capable here: {names})",
        )
    assignments: list[tuple[GpuView, Claim]] = []
    current = list(gpus)
    for _ in range(request.count):
        candidate = _choose_one(current, profiles, request, lease_id)
        if candidate is None:
            return Unplaceable(never=False, message=_busy(gpus, profiles, request))
        slot = candidate.claim.mig
        assert slot is not None, "_choose_one always makes MIG claims"
        gpu = current[candidate.index]
        current[candidate.index] = gpu.without_instance(slot.start).with_instance(
            MigInstance(slot.profile_id, slot.start, slot.size, lease_id)
        )
        assignments.append((eligible[candidate.index][0], candidate.claim))
    return Placement(tuple(assignments))


def _capacity_when_empty(gpu: MigGpu, profile: MigProfile | None) -> int:
    """How many instances of `profile` an empty GPU of this model holds."""
    if profile is None:
        return 0
    return mig_placement.capacity(replace(gpu, instances=(), mig_enabled=True), profile)


def _busy(gpus: Sequence[MigGpu], profiles: _Profiles, request: ShapeRequest) -> str:
    """Why nothing fits now, for the smallest profile the request takes anywhere."""
    if request.mig_profile:
        return mig_placement.no_room_message(gpus, request.mig_profile)
    smallest = min((p for p in profiles.by_gpu if p is not None), key=lambda p: p.memory_bytes)
    return f"{mig_placement.no_room_message(gpus, smallest.name)} (the smallest profile holding the request)"

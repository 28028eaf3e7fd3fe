"""MIG placement: which GPU and start slot a new GPU instance takes. State in, decision out, no I/O.

Occupancy follows the simulator rule of shared/reference/gpu-slicing.md section 1: an instance covers the
memory slices [start, start + size), starts only at one of its profile's allowed starts, never overlaps
another, and each profile ID stays below its own max instances. The "+me" profiles count apart from their
plain twins because NVML's instanceCount is per profile ID; "1g.20gb" is its own ID (1 compute slice, 2
memory slices). The sum of compute slices is checked too, although with the real tables the memory mask
alone already enforces it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from vgpu._private.units import MILLI_PER_GPU, format_compute, format_memory
from vgpud._private.backend.geometry import GpuModel, MigProfile, all_models


class MigErrorKind(enum.StrEnum):
    """Why a MIG request can never be served, so the service layer can pick a reason code."""

    NO_MIG_GPU = "no_mig_gpu"
    """No GPU (or model) involved is MIG-capable."""
    UNKNOWN_PROFILE = "unknown_profile"
    """No model in the geometry table has a profile of that name."""
    PROFILE_NOT_HERE = "profile_not_here"
    """The profile exists, but not on the models at hand."""
    TOO_LARGE = "too_large"
    """No profile of the model holds the requested memory and compute."""


class MigProfileError(ValueError):
    """A MIG request that no profile at hand can serve; the message lists the profiles that exist."""

    def __init__(self, kind: MigErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class MigInstance:
    """One GPU instance placed on a GPU."""

    profile_id: int
    """`nvmlGpuInstanceProfileInfo.id` of its profile."""
    start: int
    """First memory slice it covers."""
    size: int
    """Memory slices it covers."""
    lease_id: str = ""
    """The lease holding it; empty while it is idle (kept warm), so it may be destroyed."""


@dataclass(frozen=True, slots=True)
class MigGpu:
    """One GPU as MIG placement sees it: its model, whether MIG is on, and the instances on it."""

    uuid: str
    model: GpuModel
    mig_enabled: bool
    instances: tuple[MigInstance, ...] = ()
    schedulable: bool = True
    """False when the GPU is unhealthy or its node is draining: nothing new lands there."""

    def with_instance(self, instance: MigInstance) -> MigGpu:
        """This GPU plus one instance (not checked: ask `fits` first)."""
        return replace(self, instances=(*self.instances, instance))

    def without_instance(self, start: int) -> MigGpu:
        """This GPU without the instance that starts at `start`."""
        return replace(self, instances=tuple(i for i in self.instances if i.start != start))


@dataclass(frozen=True, slots=True)
class Choice:
    """Where a new instance goes."""

    index: int
    """Position of the GPU in the sequence it was chosen from."""
    gpu: MigGpu
    profile: MigProfile
    """The profile as the chosen GPU's model defines it."""
    start: int

    @property
    def instance(self) -> MigInstance:
        """The instance to create (no lease yet)."""
        return MigInstance(self.profile.id, self.start, self.profile.memory_slices)


@dataclass(frozen=True, slots=True)
class ProfileRoom:
    """A profile that still fits on a GPU, for `vgpuctl mig show`."""

    profile: MigProfile
    more: int
    """How many more instances of it could be created if nothing else were (NVML's RemainingCapacity)."""


def profile_key(name: str) -> str:
    """A profile name as the table spells it: "MIG 3G.40GB " -> "3g.40gb"."""
    return name.strip().removeprefix("MIG ").strip().lower()


def profile_named(model: GpuModel, name: str) -> MigProfile | None:
    """The model's profile called `name` ("3g.40gb", "MIG 3g.40gb", any case), or None."""
    wanted = profile_key(name)
    return next((p for p in model.mig_profiles if p.name == wanted), None)


def profile_of(model: GpuModel, instance: MigInstance) -> MigProfile | None:
    """The model's profile of a placed instance; None for an ID the table lacks (a newer driver's)."""
    return next((p for p in model.mig_profiles if p.id == instance.profile_id), None)


def _mask(start: int, size: int) -> int:
    return ((1 << size) - 1) << start


@dataclass(frozen=True, slots=True)
class _Occupancy:
    """A GPU's instances reduced to what placement needs; hashable so room computations can be cached."""

    model: GpuModel
    used: int
    """Bit i set: memory slice i is taken."""
    counts: tuple[tuple[int, int], ...]
    """(profile id, live instances), sorted."""
    compute: int
    """Compute slices taken."""

    def count(self, profile_id: int) -> int:
        return next((n for pid, n in self.counts if pid == profile_id), 0)

    def plus(self, profile: MigProfile, start: int) -> _Occupancy:
        counts = dict(self.counts)
        counts[profile.id] = counts.get(profile.id, 0) + 1
        return _Occupancy(
            self.model,
            self.used | _mask(start, profile.memory_slices),
            tuple(sorted(counts.items())),
            self.compute + profile.compute_slices,
        )


def _occupancy(gpu: MigGpu) -> _Occupancy:
    used = 0
    counts: dict[int, int] = {}
    compute = 0
    for inst in gpu.instances:
        used |= _mask(inst.start, inst.size)
        counts[inst.profile_id] = counts.get(inst.profile_id, 0) + 1
        profile = profile_of(gpu.model, inst)
        # An ID the table lacks: its size bounds its compute slices from above (size >= compute in every row).
        compute += profile.compute_slices if profile is not None else inst.size
    return _Occupancy(gpu.model, used, tuple(sorted(counts.items())), compute)


def _starts(occ: _Occupancy, profile: MigProfile) -> tuple[int, ...]:
    """Allowed starts of `profile` that are free now, honouring max instances and compute slices."""
    if occ.count(profile.id) >= profile.max_instances:
        return ()
    if occ.compute + profile.compute_slices > occ.model.compute_slices:
        return ()
    return tuple(
        s
        for s in profile.allowed_starts
        if s + profile.memory_slices <= occ.model.memory_slices and not occ.used & _mask(s, profile.memory_slices)
    )


def _capacity(occ: _Occupancy, profile: MigProfile) -> int:
    """How many more instances of `profile` alone fit: disjoint free placements, capped by count and compute."""
    taken = 0
    disjoint = 0
    for s in _starts(occ, profile):  # equal-size intervals by start: greedy is optimal
        m = _mask(s, profile.memory_slices)
        if not taken & m:
            taken |= m
            disjoint += 1
    by_count = profile.max_instances - occ.count(profile.id)
    by_compute = (occ.model.compute_slices - occ.compute) // profile.compute_slices
    return min(disjoint, by_count, by_compute)


Shape = tuple[int, int]
"""(memory slices, compute slices) of a profile: the unit the placement score counts in."""


@lru_cache(maxsize=4096)
def _room(occ: _Occupancy) -> Mapping[Shape, int]:
    """Per shape, the most instances of any one profile of that shape that still fit."""
    room: dict[Shape, int] = {}
    for p in occ.model.mig_profiles:
        shape = (p.memory_slices, p.compute_slices)
        room[shape] = max(room.get(shape, 0), _capacity(occ, p))
    return room


def _shapes(models: Iterable[GpuModel]) -> tuple[Shape, ...]:
    """Every shape of these models, largest first."""
    return tuple(sorted({(p.memory_slices, p.compute_slices) for m in models for p in m.mig_profiles}, reverse=True))


def _on_model(model: GpuModel, profile: MigProfile | str) -> MigProfile:
    found = profile_named(model, profile if isinstance(profile, str) else profile.name)
    if found is None:
        name = profile if isinstance(profile, str) else profile.name
        raise _profile_error(name, [model])
    return found


def fits(gpu: MigGpu, profile: MigProfile | str) -> tuple[int, ...]:
    """Starts where `profile` (by name, on this GPU's model) can be created now; () when MIG is off."""
    found = _on_model(gpu.model, profile)
    return _starts(_occupancy(gpu), found) if gpu.mig_enabled else ()


def capacity(gpu: MigGpu, profile: MigProfile | str) -> int:
    """How many more instances of `profile` fit on this GPU if nothing else is created (0 when MIG is off)."""
    found = _on_model(gpu.model, profile)
    return _capacity(_occupancy(gpu), found) if gpu.mig_enabled else 0


def still_fits(gpu: MigGpu) -> tuple[ProfileRoom, ...]:
    """The profiles that can still be created on this GPU, each with how many more, in `-lgip` order."""
    if not gpu.mig_enabled:
        return ()
    occ = _occupancy(gpu)
    rooms = (ProfileRoom(p, _capacity(occ, p)) for p in gpu.model.mig_profiles)
    return tuple(r for r in rooms if r.more > 0)


def room_score(gpu: MigGpu) -> tuple[int, ...]:
    """Per shape of the model, largest first, how many more of it fit: what `choose` maximises, for one GPU."""
    room = _room(_occupancy(gpu)) if gpu.mig_enabled else {}
    return tuple(room.get(shape, 0) for shape in _shapes([gpu.model]))


def slot_owners(gpu: MigGpu) -> tuple[MigInstance | None, ...]:
    """The instance covering each memory slice (None: free), for an occupancy bar."""
    owners: list[MigInstance | None] = [None] * gpu.model.memory_slices
    for inst in gpu.instances:
        for s in range(inst.start, min(inst.start + inst.size, len(owners))):
            owners[s] = inst
    return tuple(owners)


def _candidates(gpus: Sequence[MigGpu], profile_name: str) -> list[tuple[int, MigGpu, MigProfile]]:
    """(index, gpu, its profile) of every open MIG GPU whose model has the profile; raises when none ever could."""
    check_name(gpus, profile_name)
    out: list[tuple[int, MigGpu, MigProfile]] = []
    for index, gpu in enumerate(gpus):
        profile = profile_named(gpu.model, profile_name)
        if profile is not None and gpu.mig_enabled and gpu.schedulable:
            out.append((index, gpu, profile))
    return out


def choose(gpus: Sequence[MigGpu], profile_name: str) -> Choice | None:
    """Place one instance so the largest future profiles stay placeable; None when it fits nowhere now.

    Every free (gpu, start) is scored by what the whole pool could still hold after it, compared in order:
    1. per shape, largest first (7g, 4g, 3g, 2g, 1g.20gb, 1g): the sum over GPUs of how many more
       instances of that shape would still fit; more is better. An empty GPU is the only place a 7g fits,
       so this keeps whole GPUs whole, then keeps 4-slice spans whole, then 2-slice spans;
    2. free memory slices left on the chosen GPU; fewer is better (best fit: fill partly used GPUs);
    3. the GPU's position in `gpus`, then the start: lowest first, for determinism.
    Raises MigProfileError when no GPU of the pool has the profile at all.
    """
    candidates = _candidates(gpus, profile_name)
    if not candidates:
        return None
    before = {i: _room(_occupancy(g)) for i, g in enumerate(gpus) if g.mig_enabled and g.schedulable}
    shapes = _shapes(gpus[i].model for i in before)
    total = {shape: sum(r.get(shape, 0) for r in before.values()) for shape in shapes}
    best: tuple[tuple[int, ...], int, int, int] | None = None
    choice: Choice | None = None
    for index, gpu, profile in candidates:
        occ = _occupancy(gpu)
        for start in _starts(occ, profile):
            after = occ.plus(profile, start)
            room = _room(after)
            mine = before[index]
            vector = tuple(-(total[s] - mine.get(s, 0) + room.get(s, 0)) for s in shapes)
            free = gpu.model.memory_slices - after.used.bit_count()
            key = (vector, free, index, start)
            if best is None or key < best:
                best, choice = key, Choice(index, gpu, profile, start)
    return choice


def choose_first_fit(gpus: Sequence[MigGpu], profile_name: str) -> Choice | None:
    """The baseline: the first GPU in order with room, at its lowest free allowed start."""
    for index, gpu, profile in _candidates(gpus, profile_name):
        starts = _starts(_occupancy(gpu), profile)
        if starts:
            return Choice(index, gpu, profile, starts[0])
    return None


def no_room_message(gpus: Sequence[MigGpu], profile_name: str) -> str:
    """Why `choose` found no place, naming what still fits where, for a busy-pool refusal."""
    candidates = _candidates(gpus, profile_name)
    having = [g for g in gpus if profile_named(g.model, profile_name) is not None]
    if not candidates:
        off = sum(1 for g in having if not g.mig_enabled)
        closed = sum(1 for g in having if g.mig_enabled and not g.schedulable)
        return (
            f"no GPU can take {profile_name} now: of {len(having)} GPU(s) with that profile, {off} are not in "
            f"MIG mode (vgpuctl gpu mode GPU mig) and {closed} are draining or unhealthy"
        )
    rooms = [
        f"{g.uuid}: {', '.join(f'{r.profile.name} x{r.more}' for r in still_fits(g)) or 'full'}"
        for _, g, _ in candidates
    ]
    return f"no room for {profile_name} on {len(candidates)} MIG GPU(s) now; still fits: " + "; ".join(rooms)


def _sm_share_milli(model: GpuModel, profile: MigProfile) -> float:
    """The profile's SMs as milli-GPU of the SMs MIG can hand out at all (the largest profile's)."""
    return profile.sm_count * MILLI_PER_GPU / max(p.sm_count for p in model.mig_profiles)


def smallest_profile_for(model: GpuModel, memory_bytes: int, compute_milli: int | None = None) -> MigProfile:
    """The smallest profile, by (memory slices, compute slices), holding this memory and SM share.

    The SM share is counted against the largest profile's SMs (7g on A100 has 98 of the GPU's 108), so
    compute_milli=1000 asks for the whole MIG-able GPU. A plain profile wins over its "+me" twin.
    """
    if not model.mig_capable:
        raise MigProfileError(MigErrorKind.NO_MIG_GPU, f"{model.key} has no MIG; MIG-capable: {mig_model_keys()}")
    fitting = [
        p
        for p in model.mig_profiles
        if p.memory_bytes >= memory_bytes and (compute_milli is None or _sm_share_milli(model, p) >= compute_milli)
    ]
    if fitting:
        return min(fitting, key=lambda p: (p.memory_slices, p.compute_slices, "+" in p.name, p.id))
    asked = format_memory(memory_bytes) + (f" and {format_compute(compute_milli)} GPU" if compute_milli else "")
    offers = ", ".join(
        f"{p.name} ({format_memory(p.memory_bytes)}, {format_compute(round(_sm_share_milli(model, p)))} GPU)"
        for p in model.mig_profiles
    )
    raise MigProfileError(
        MigErrorKind.TOO_LARGE, f"no MIG profile of {model.key} holds {asked}; its profiles: {offers}"
    )


def mig_model_keys() -> str:
    return ", ".join(m.key for m in all_models() if m.mig_capable)


def check_name(gpus: Sequence[MigGpu], profile_name: str) -> None:
    """Raise MigProfileError unless some GPU of the pool has a profile of this name."""
    models = list({g.model.key: g.model for g in gpus if g.model.mig_capable}.values())
    if not models:
        raise MigProfileError(
            MigErrorKind.NO_MIG_GPU, f"no GPU of this pool is MIG-capable; MIG-capable models: {mig_model_keys()}"
        )
    if not any(profile_named(m, profile_name) is not None for m in models):
        raise _profile_error(profile_name, models)


def _profile_error(name: str, models: Sequence[GpuModel]) -> MigProfileError:
    """The error for a profile name none of `models` has, listing the profiles they do have."""
    here = "; ".join(f"{m.key}: {', '.join(p.name for p in m.mig_profiles) or 'no MIG'}" for m in models)
    elsewhere = [m.key for m in all_models() if profile_named(m, name) is not None]
    if elsewhere:
        return MigProfileError(
            MigErrorKind.PROFILE_NOT_HERE,
            f"MIG profile {name!r} is a profile of {', '.join(elsewhere)}, not of the GPUs here; profiles here: {here}",
        )
    return MigProfileError(MigErrorKind.UNKNOWN_PROFILE, f"unknown MIG profile {name!r}; profiles here: {here}")

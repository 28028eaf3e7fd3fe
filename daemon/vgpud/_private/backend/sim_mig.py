"""MIG state of one simulated GPU, with the rules and NVML codes of gpu-slicing.md sections 1 and 2.

A GI `create(id, start)` succeeds iff the start is an allowed start of the profile (else INVALID_ARGUMENT),
its memory slices are free, fewer than `max_instances` GIs of that profile live, and the compute slices
fit (else INSUFFICIENT_RESOURCES). Destroying anything that still holds CIs or processes is IN_USE.
"""

from __future__ import annotations

import itertools
import uuid as uuidlib
from dataclasses import dataclass, field

from vgpud._private.backend.geometry import GpuModel, MigProfile
from vgpud._private.backend.nvml_codes import (
    CI_PROFILE_INDEX_BY_SLICES,
    NVML_COMPUTE_INSTANCE_PROFILE_COUNT,
    NVML_ERROR_IN_USE,
    NVML_ERROR_INSUFFICIENT_RESOURCES,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_RESET_REQUIRED,
    NVML_GPU_INSTANCE_PROFILE_COUNT,
    NVML_SUCCESS,
)
from vgpud._private.backend.sim_structs import SimNvmlError

_CI_SLICES = {index: slices for slices, index in CI_PROFILE_INDEX_BY_SLICES.items()}


@dataclass(slots=True)
class SimComputeInstance:
    """A compute instance: what a MIG device (and its UUID) stands for."""

    id: int
    """CI ID within its GI."""
    profile_id: int
    """CI profile ID (equal to its NVML index)."""
    slices: int
    """Compute slices it takes."""
    start: int
    """First compute slice inside the GI."""
    uuid: str
    """"MIG-<uuid>": globally unique, never reused."""
    serial: int
    """Incarnation number, so that handles of a destroyed CI die."""
    pids: list[int] = field(default_factory=list)
    """Fake processes running on it (tests put them there)."""


@dataclass(slots=True)
class SimGpuInstance:
    """A GPU instance: a profile at a placement of memory slices."""

    id: int
    """GI ID."""
    profile: MigProfile
    """Its GI profile."""
    start: int
    """First memory slice."""
    serial: int
    """Incarnation number, so that handles of a destroyed GI die."""
    cis: dict[int, SimComputeInstance] = field(default_factory=dict)
    """Compute instances by CI ID."""

    def span(self) -> int:
        """Bit mask of the memory slices it occupies."""
        return _bits(self.start, self.profile.memory_slices)


def _bits(start: int, size: int) -> int:
    return ((1 << size) - 1) << start


def _fail(code: int) -> SimNvmlError:
    return SimNvmlError(code)


class SimMig:
    """Mode, GIs, CIs and fake processes of one GPU; callers hold the simulator's lock."""

    def __init__(self, model: GpuModel) -> None:
        """A GPU fresh from the factory: MIG off, nothing on it."""
        self.model = model
        self.current = False
        """MIG mode now."""
        self.pending = False
        """MIG mode after the next reset."""
        self.reset_impossible = False
        """Set by tests: the platform cannot reset the GPU (a passthrough VM), so Ampere mode changes pend."""
        self.gis: dict[int, SimGpuInstance] = {}
        self.gpu_pids: list[int] = []
        """Fake processes on the whole GPU (MIG off)."""
        self._serials = itertools.count(1)

    def clear(self) -> None:
        """Back to MIG off with nothing on the GPU."""
        self.current = self.pending = False
        self.gis.clear()
        self.gpu_pids.clear()

    def require_capable(self) -> None:
        """NOT_SUPPORTED on a model without MIG."""
        if not self.model.mig_capable:
            raise _fail(NVML_ERROR_NOT_SUPPORTED)

    def require_on(self) -> None:
        """NOT_SUPPORTED while MIG is off (or absent)."""
        self.require_capable()
        if not self.current:
            raise _fail(NVML_ERROR_NOT_SUPPORTED)

    def set_mode(self, enabled: bool) -> int:
        """The activation status of a mode change; a refused change leaves the mode as it was."""
        self.require_capable()
        if enabled == self.current:
            self.pending = enabled
            return NVML_SUCCESS
        if self.gis or self.gpu_pids:
            return NVML_ERROR_IN_USE
        if self.reset_impossible and self.model.architecture == "ampere":
            self.pending = enabled  # Ampere applies MIG mode on a GPU reset; Hopper needs none.
            return NVML_ERROR_RESET_REQUIRED
        self.current = self.pending = enabled
        return NVML_SUCCESS

    def profile_at(self, index: int) -> MigProfile:
        """The GI profile queried by NVML index; MIG must be on."""
        if not 0 <= index < NVML_GPU_INSTANCE_PROFILE_COUNT:
            raise _fail(NVML_ERROR_INVALID_ARGUMENT)
        self.require_on()
        for profile in self.model.mig_profiles:
            if profile.nvml_index == index:
                return profile
        raise _fail(NVML_ERROR_NOT_SUPPORTED)

    def profile(self, profile_id: int) -> MigProfile:
        """The GI profile with this ID; INVALID_ARGUMENT for one the model lacks."""
        self.require_capable()
        for profile in self.model.mig_profiles:
            if profile.id == profile_id:
                return profile
        raise _fail(NVML_ERROR_INVALID_ARGUMENT)

    def occupied(self) -> int:
        """Bit mask of occupied memory slices."""
        mask = 0
        for gi in self.gis.values():
            mask |= gi.span()
        return mask

    def _compute_used(self) -> int:
        return sum(gi.profile.compute_slices for gi in self.gis.values())

    def _live(self, profile: MigProfile) -> int:
        return sum(1 for gi in self.gis.values() if gi.profile.id == profile.id)

    def remaining_capacity(self, profile_id: int) -> int:
        """How many more GIs of the profile fit now (placing them lowest start first)."""
        self.require_on()
        profile = self.profile(profile_id)
        taken, count = self.occupied(), 0
        room = min(
            profile.max_instances - self._live(profile),
            (self.model.compute_slices - self._compute_used()) // profile.compute_slices,
        )
        for start in profile.allowed_starts:
            span = _bits(start, profile.memory_slices)
            if count < room and not span & taken:
                taken |= span
                count += 1
        return count

    def create_gi(self, profile_id: int, start: int, size: int, gi_id: int | None = None) -> SimGpuInstance:
        """Place a GI; `gi_id` is given only when restoring saved state."""
        self.require_on()
        profile = self.profile(profile_id)
        if size != profile.memory_slices or start not in profile.allowed_starts:
            raise _fail(NVML_ERROR_INVALID_ARGUMENT)
        if (
            _bits(start, size) & self.occupied()
            or self._live(profile) >= profile.max_instances
            or self._compute_used() + profile.compute_slices > self.model.compute_slices
        ):
            raise _fail(NVML_ERROR_INSUFFICIENT_RESOURCES)
        if gi_id is None:
            # The driver picks IDs; as on real GPUs the whole-GPU instance is GI 0, the others count from 1.
            first = 0 if size == self.model.memory_slices else 1
            gi_id = next(i for i in itertools.count(first) if i not in self.gis)
        elif gi_id in self.gis or gi_id < 0:
            raise _fail(NVML_ERROR_INVALID_ARGUMENT)
        gi = SimGpuInstance(id=gi_id, profile=profile, start=start, serial=next(self._serials))
        self.gis[gi_id] = gi
        return gi

    def destroy_gi(self, gi: SimGpuInstance) -> None:
        """IN_USE while it holds compute instances (and so, processes)."""
        if gi.cis:
            raise _fail(NVML_ERROR_IN_USE)
        del self.gis[gi.id]

    def ci_profile(self, gi: SimGpuInstance, index: int) -> tuple[int, int]:
        """(compute slices, instance count) of a CI profile inside `gi`."""
        if not 0 <= index < NVML_COMPUTE_INSTANCE_PROFILE_COUNT:
            raise _fail(NVML_ERROR_INVALID_ARGUMENT)
        slices = _CI_SLICES.get(index)
        if slices is None or slices > gi.profile.compute_slices:
            raise _fail(NVML_ERROR_NOT_SUPPORTED)
        return slices, gi.profile.compute_slices // slices

    def create_ci(
        self,
        gi: SimGpuInstance,
        profile_id: int,
        *,
        ci_id: int | None = None,
        start: int | None = None,
        uuid: str | None = None,
    ) -> SimComputeInstance:
        """Place a CI at the lowest free aligned start; id, start and uuid are given only when restoring."""
        slices, count = self.ci_profile(gi, profile_id)
        taken = 0
        for ci in gi.cis.values():
            taken |= _bits(ci.start, ci.slices)
        starts = [s for s in range(0, gi.profile.compute_slices - slices + 1, slices) if not _bits(s, slices) & taken]
        if sum(1 for ci in gi.cis.values() if ci.profile_id == profile_id) >= count or not starts:
            raise _fail(NVML_ERROR_INSUFFICIENT_RESOURCES)
        if start is not None and start not in starts:
            raise _fail(NVML_ERROR_INSUFFICIENT_RESOURCES)
        if ci_id is None:
            ci_id = next(i for i in itertools.count() if i not in gi.cis)
        elif ci_id in gi.cis or ci_id < 0:
            raise _fail(NVML_ERROR_INVALID_ARGUMENT)
        ci = SimComputeInstance(
            id=ci_id,
            profile_id=profile_id,
            slices=slices,
            start=starts[0] if start is None else start,
            uuid=uuid if uuid is not None else f"MIG-{uuidlib.uuid4()}",
            serial=next(self._serials),
        )
        gi.cis[ci_id] = ci
        return ci

    @staticmethod
    def destroy_ci(gi: SimGpuInstance, ci: SimComputeInstance) -> None:
        """IN_USE while processes run on it."""
        if ci.pids:
            raise _fail(NVML_ERROR_IN_USE)
        del gi.cis[ci.id]

    def mig_devices(self) -> list[tuple[SimGpuInstance, SimComputeInstance]]:
        """One MIG device per CI, ordered by (GI ID, CI ID): the MIG device index order."""
        found: list[tuple[SimGpuInstance, SimComputeInstance]] = []
        for gi_id in sorted(self.gis):
            gi = self.gis[gi_id]
            found.extend((gi, gi.cis[ci_id]) for ci_id in sorted(gi.cis))
        return found

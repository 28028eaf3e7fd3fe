"""SimNvml's MIG emulation, called the way pynvml is called: geometry rules, handles, and NVML error codes."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import pytest

from vgpud._private.backend import geometry, mig_calls
from vgpud._private.backend.geometry import GpuModel, MigProfile
from vgpud._private.backend.nvml_codes import (
    NVML_ERROR_IN_USE,
    NVML_ERROR_INSUFFICIENT_RESOURCES,
    NVML_ERROR_INSUFFICIENT_SIZE,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_RESET_REQUIRED,
    NVML_SUCCESS,
)
from vgpud._private.backend.sim import SimGpu, SimNvml, SimNvmlError

MIG_MODELS = [m for m in geometry.all_models() if m.mig_capable]


def make_sim(*keys: str, mig: bool = True) -> tuple[SimNvml, list[Any]]:
    """A SimNvml with these models, initialised, MIG on (unless mig=False); returns the GPU handles."""
    sim = SimNvml([SimGpu(i, f"GPU-sim-{i}", geometry.lookup_model(k)) for i, k in enumerate(keys)])
    sim.nvmlInit()
    handles = [sim.nvmlDeviceGetHandleByIndex(i) for i in range(len(keys))]
    if mig:
        for handle in handles:
            assert sim.nvmlDeviceSetMigMode(handle, 1) == NVML_SUCCESS
    return sim, handles


def code(call: Callable[..., object], *args: Any) -> int:
    """The NVML code `call(*args)` fails with."""
    with pytest.raises(SimNvmlError) as info:
        call(*args)
    return info.value.value


def create(sim: SimNvml, dev: Any, profile_id: int, start: int, size: int | None = None) -> Any:
    if size is None:
        size = next(p for p in sim.gpus[dev.index].model.mig_profiles if p.id == profile_id).memory_slices
    return mig_calls.create_gpu_instance(sim, dev, profile_id, start, size)


def full_ci(sim: SimNvml, gi: Any) -> Any:
    info = sim.nvmlGpuInstanceGetInfo(gi)
    slices = next(p for p in sim.gpus[0].model.mig_profiles if p.id == info.profileId).compute_slices
    index = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}[slices]
    return sim.nvmlGpuInstanceCreateComputeInstance(
        gi, sim.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, 0).id
    )


def test_reference_profile_loop() -> None:
    """gpu-slicing.md section 2: enabling MIG, then reading profiles by index, skipping absent ones."""
    sim, (dev,) = make_sim("h100-80gb", mig=False)
    assert sim.nvmlDeviceGetMigMode(dev) == [0, 0]
    assert sim.nvmlDeviceSetMigMode(dev, 1) == NVML_SUCCESS
    profiles, skipped = {}, set()
    for idx in range(0x12):
        try:
            info = sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, idx)
        except SimNvmlError as exc:
            skipped.add(exc.value)
            continue
        profiles[info.id] = info
    assert sorted(profiles) == [0, 5, 9, 14, 15, 19, 20]
    assert profiles[9].name == "MIG 3g.40gb"
    assert profiles[9].instanceCount == 2
    assert skipped == {NVML_ERROR_NOT_SUPPORTED}


def test_reference_sequence_runs_unchanged_with_byref() -> None:
    """gpu-slicing.md section 2, pynvml's calling convention (ctypes.byref), on a simulated H100."""
    sim, (dev,) = make_sim("h100-80gb")
    pid = 9
    cnt = ctypes.c_uint(0)
    sim.nvmlDeviceGetGpuInstancePossiblePlacements(dev, pid, None, ctypes.byref(cnt))
    arr = (sim.c_nvmlGpuInstancePlacement_t * cnt.value)()
    sim.nvmlDeviceGetGpuInstancePossiblePlacements(dev, pid, arr, ctypes.byref(cnt))
    assert [(p.start, p.size) for p in arr] == [(0, 4), (4, 4)]
    pl = sim.c_nvmlGpuInstancePlacement_t()
    pl.start, pl.size = 4, 4
    gi = sim.nvmlDeviceCreateGpuInstanceWithPlacement(dev, pid, ctypes.byref(pl))
    gii = sim.nvmlGpuInstanceGetInfo(gi)
    assert (gii.profileId, gii.placement.start, gii.placement.size) == (9, 4, 4)
    cip = sim.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 0x2, 0)
    assert (cip.sliceCount, cip.instanceCount, cip.multiprocessorCount) == (3, 1, 60)
    ci = sim.nvmlGpuInstanceCreateComputeInstance(gi, cip.id)
    cii = sim.nvmlComputeInstanceGetInfo(ci)
    uuids, misses = [], set()
    for i in range(sim.nvmlDeviceGetMaxMigDeviceCount(dev)):
        try:
            m = sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, i)
        except SimNvmlError as exc:
            misses.add(exc.value)
            continue
        if (sim.nvmlDeviceGetGpuInstanceId(m), sim.nvmlDeviceGetComputeInstanceId(m)) == (gii.id, cii.id):
            uuids.append(sim.nvmlDeviceGetUUID(m))
            assert sim.nvmlDeviceGetName(m) == "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
            assert sim.nvmlDeviceGetMemoryInfo(m).total == 40448 * geometry.MIB
    assert len(uuids) == 1
    assert uuids[0].startswith("MIG-")
    assert misses == {NVML_ERROR_NOT_FOUND}
    n = ctypes.c_uint(2)
    buf = (sim.c_nvmlGpuInstance_t * n.value)()
    sim.nvmlDeviceGetGpuInstances(dev, pid, buf, ctypes.byref(n))
    assert n.value == 1
    assert sim.nvmlGpuInstanceGetInfo(buf[0]).id == gii.id
    assert sim.nvmlDeviceGetGpuInstanceById(dev, gii.id) == gi
    cbuf = (sim.c_nvmlComputeInstance_t * 1)()
    sim.nvmlGpuInstanceGetComputeInstances(gi, cip.id, cbuf, ctypes.byref(n))
    assert n.value == 1
    assert sim.nvmlComputeInstanceGetInfo(cbuf[0]).id == cii.id
    assert sim.nvmlGpuInstanceGetComputeInstanceById(gi, cii.id) == ci
    assert sim.nvmlComputeInstanceDestroy(ci) == NVML_SUCCESS
    assert sim.nvmlGpuInstanceDestroy(gi) == NVML_SUCCESS
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, pid) == 2


@pytest.mark.parametrize("model", MIG_MODELS, ids=lambda m: m.key)
def test_profile_info_by_index_matches_the_table(model: GpuModel) -> None:
    sim, (dev,) = make_sim(model.key)
    for profile in model.mig_profiles:
        info = sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, profile.nvml_index)
        assert (info.id, info.sliceCount, info.instanceCount) == (
            profile.id,
            profile.compute_slices,
            profile.max_instances,
        )
        assert (info.multiprocessorCount, info.memorySizeMB, info.name) == (
            profile.sm_count,
            profile.memory_mib,
            f"MIG {profile.name}",
        )
    known = {p.nvml_index for p in model.mig_profiles}
    for index in set(range(0x12)) - known:
        assert code(sim.nvmlDeviceGetGpuInstanceProfileInfo, dev, index) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0x12)) == NVML_ERROR_INVALID_ARGUMENT


def every_placement(models: list[GpuModel]) -> list[tuple[GpuModel, MigProfile, int]]:
    return [(m, p, s) for m in models for p in m.mig_profiles for s in p.allowed_starts]


@pytest.mark.parametrize(
    ("model", "profile", "start"),
    every_placement([geometry.lookup_model("h100-80gb"), geometry.lookup_model("a30-24gb")]),
    ids=lambda v: getattr(v, "key", None) or getattr(v, "name", None) or str(v),
)
def test_create_at_every_allowed_start_on_an_empty_gpu(model: GpuModel, profile: MigProfile, start: int) -> None:
    sim, (dev,) = make_sim(model.key)
    gi = create(sim, dev, profile.id, start)
    info = sim.nvmlGpuInstanceGetInfo(gi)
    assert (info.profileId, info.placement.start, info.placement.size) == (profile.id, start, profile.memory_slices)
    ci = full_ci(sim, gi)
    assert sim.nvmlComputeInstanceGetInfo(ci).placement.size == profile.compute_slices
    sim.nvmlComputeInstanceDestroy(ci)
    sim.nvmlGpuInstanceDestroy(gi)


@pytest.mark.parametrize("model", MIG_MODELS, ids=lambda m: m.key)
def test_starts_the_profile_does_not_allow_are_invalid(model: GpuModel) -> None:
    sim, (dev,) = make_sim(model.key)
    for profile in model.mig_profiles:
        for start in set(range(model.memory_slices + 1)) - set(profile.allowed_starts):
            assert code(create, sim, dev, profile.id, start) == NVML_ERROR_INVALID_ARGUMENT
        # The placement size must be the profile's.
        wrong = profile.memory_slices + 1
        assert code(create, sim, dev, profile.id, profile.allowed_starts[0], wrong) == NVML_ERROR_INVALID_ARGUMENT
    assert code(lambda: create(sim, dev, 99, 0, 1)) == NVML_ERROR_INVALID_ARGUMENT
    assert sim.gpus[0].mig.gis == {}


def test_overlap_is_insufficient_resources() -> None:
    sim, (dev,) = make_sim("h100-80gb")
    create(sim, dev, 9, 4)  # 3g.40gb on slices 4-7
    for profile_id, start in [(9, 4), (19, 4), (19, 6), (15, 6), (14, 4), (0, 0)]:
        assert code(create, sim, dev, profile_id, start) == NVML_ERROR_INSUFFICIENT_RESOURCES
    create(sim, dev, 14, 0)  # 2g.20gb at 0-1 still fits


def test_max_instances_with_free_slices() -> None:
    sim, (h100, a30) = make_sim("h100-80gb", "a30-24gb")
    create(sim, h100, 20, 0)  # 1g.10gb+me: at most 1
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, 20) == 0
    assert code(lambda: create(sim, h100, 20, 3)) == NVML_ERROR_INSUFFICIENT_RESOURCES
    create(sim, a30, 6, 0)  # 2g.12gb+me: at most 1
    assert code(lambda: create(sim, a30, 6, 2)) == NVML_ERROR_INSUFFICIENT_RESOURCES
    create(sim, a30, 5, 2)  # plain 2g.12gb fits beside it


def test_seven_small_instances_then_the_eighth_is_refused() -> None:
    sim, (dev,) = make_sim("h100-80gb")
    for start in range(7):
        assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19) == 7 - start
        create(sim, dev, 19, start)
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19) == 0
    assert code(lambda: create(sim, dev, 19, 0)) == NVML_ERROR_INSUFFICIENT_RESOURCES
    assert code(lambda: create(sim, dev, 19, 7)) == NVML_ERROR_INVALID_ARGUMENT  # slice 7 is no 1g start
    assert [gi.id for gi in sim.gpus[0].mig.gis.values()] == list(range(1, 8))


def test_remaining_capacity_counts_what_still_fits() -> None:
    sim, (dev,) = make_sim("h100-80gb")
    create(sim, dev, 9, 0)  # 3g at 0:4
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19) == 3  # the reference's example
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 15) == 2
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 9) == 1
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 5) == 0
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 0) == 0


def test_compute_slices_are_limited_too() -> None:
    # A made-up model where compute slices run out before memory slices: the count rule must still hold.
    tiny = MigProfile(1, "1g.1gb", 0, 1, 1, 8, tuple(range(8)), 1024, 1)
    model = GpuModel("tiny", ("Tiny",), 8 << 30, 2, "hopper", 8, 2, (tiny,))
    sim = SimNvml([SimGpu(0, "GPU-tiny", model)])
    sim.nvmlInit()
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    sim.nvmlDeviceSetMigMode(dev, 1)
    create(sim, dev, 1, 0)
    create(sim, dev, 1, 5)
    assert sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 1) == 0
    assert code(lambda: create(sim, dev, 1, 3)) == NVML_ERROR_INSUFFICIENT_RESOURCES


def test_whole_gpu_instance_is_gi_zero() -> None:
    sim, (dev,) = make_sim("a100-40gb")
    assert sim.nvmlGpuInstanceGetInfo(create(sim, dev, 0, 0)).id == 0


def test_mig_calls_need_mig_on() -> None:
    sim, (dev,) = make_sim("h100-80gb", mig=False)
    assert code(lambda: sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0)) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: create(sim, dev, 19, 0, 1)) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: mig_calls.gpu_instances(sim, dev, 19, 7)) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19)) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: sim.nvmlDeviceGetGpuInstanceById(dev, 1)) == NVML_ERROR_NOT_SUPPORTED
    # Possible placements answer with MIG on or off.
    assert mig_calls.possible_placements(sim, dev, 9) == [(0, 4), (4, 4)]


def test_models_without_mig_are_not_supported() -> None:
    sim, (dev,) = make_sim("l4-24gb", mig=False)
    assert code(lambda: sim.nvmlDeviceSetMigMode(dev, 1)) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: sim.nvmlDeviceGetMigMode(dev)) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0)) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: mig_calls.possible_placements(sim, dev, 19)) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: sim.nvmlDeviceGetMaxMigDeviceCount(dev)) == NVML_ERROR_NOT_SUPPORTED


def test_mode_change_is_refused_while_instances_or_processes_exist() -> None:
    sim, (dev,) = make_sim("h100-80gb")
    gi = create(sim, dev, 19, 0)
    assert sim.nvmlDeviceSetMigMode(dev, 0) == NVML_ERROR_IN_USE
    assert sim.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert sim.nvmlDeviceSetMigMode(dev, 1) == NVML_SUCCESS  # no change asked: nothing refused
    sim.nvmlGpuInstanceDestroy(gi)
    assert sim.nvmlDeviceSetMigMode(dev, 0) == NVML_SUCCESS
    assert sim.nvmlDeviceGetMigMode(dev) == [0, 0]
    sim.add_process("GPU-sim-0", 4242)  # a CUDA program on the whole GPU: not idle
    assert sim.nvmlDeviceSetMigMode(dev, 1) == NVML_ERROR_IN_USE
    assert sim.nvmlDeviceGetComputeRunningProcesses(dev)[0].pid == 4242
    sim.remove_process(4242)
    assert sim.nvmlDeviceSetMigMode(dev, 1) == NVML_SUCCESS
    assert code(lambda: sim.nvmlDeviceSetMigMode(dev, 2)) == NVML_ERROR_INVALID_ARGUMENT


def test_reset_required_leaves_the_change_pending_on_ampere() -> None:
    sim, (a100, h100) = make_sim("a100-40gb", "h100-80gb", mig=False)
    for gpu in sim.gpus:
        gpu.mig.reset_impossible = True  # a passthrough VM
    assert sim.nvmlDeviceSetMigMode(a100, 1) == NVML_ERROR_RESET_REQUIRED
    assert sim.nvmlDeviceGetMigMode(a100) == [0, 1]
    assert code(lambda: create(sim, a100, 19, 0)) == NVML_ERROR_NOT_SUPPORTED  # still off
    assert sim.nvmlDeviceSetMigMode(a100, 0) == NVML_SUCCESS  # asking for the current mode clears it
    assert sim.nvmlDeviceGetMigMode(a100) == [0, 0]
    assert sim.nvmlDeviceSetMigMode(h100, 1) == NVML_SUCCESS  # Hopper needs no reset
    assert sim.nvmlDeviceGetMigMode(h100) == [1, 1]


def test_no_permission_for_privileged_calls() -> None:
    sim, (dev,) = make_sim("h100-80gb")
    gi = create(sim, dev, 9, 0)
    ci = full_ci(sim, gi)
    sim.privileged = False
    refused: list[Callable[[], object]] = [
        lambda: sim.nvmlDeviceSetMigMode(dev, 0),
        lambda: create(sim, dev, 9, 4),
        lambda: mig_calls.possible_placements(sim, dev, 9),
        lambda: mig_calls.gpu_instances(sim, dev, 9, 2),
        lambda: sim.nvmlDeviceGetGpuInstanceById(dev, 1),
        lambda: sim.nvmlGpuInstanceCreateComputeInstance(gi, 0),
        lambda: sim.nvmlComputeInstanceDestroy(ci),
        lambda: sim.nvmlGpuInstanceDestroy(gi),
    ]
    assert [code(call) for call in refused] == [NVML_ERROR_NO_PERMISSION] * len(refused)
    # Reading profiles and MIG devices needs no privilege.
    assert sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, 2).id == 9
    assert sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)).startswith("MIG-")


def test_destroy_is_in_use_with_compute_instances_or_processes() -> None:
    sim, (dev,) = make_sim("h100-80gb")
    gi = create(sim, dev, 14, 2)
    ci = full_ci(sim, gi)
    mig_uuid = sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0))
    assert code(lambda: sim.nvmlGpuInstanceDestroy(gi)) == NVML_ERROR_IN_USE
    sim.add_process(mig_uuid, 77)
    migdev = sim.nvmlDeviceGetHandleByUUID(mig_uuid)
    (proc,) = sim.nvmlDeviceGetComputeRunningProcesses(migdev)
    assert (proc.pid, proc.gpuInstanceId, proc.computeInstanceId) == (77, 1, 0)
    assert code(lambda: sim.nvmlComputeInstanceDestroy(ci)) == NVML_ERROR_IN_USE
    with pytest.raises(ValueError, match="no MIG device or MIG-off GPU"):
        sim.add_process("GPU-sim-0", 78)  # MIG is on: CUDA sees only MIG devices
    sim.remove_process(77)
    sim.nvmlComputeInstanceDestroy(ci)
    sim.nvmlGpuInstanceDestroy(gi)
    # Handles die with their instance.
    assert code(lambda: sim.nvmlGpuInstanceGetInfo(gi)) == NVML_ERROR_INVALID_ARGUMENT
    assert code(lambda: sim.nvmlComputeInstanceGetInfo(ci)) == NVML_ERROR_INVALID_ARGUMENT
    assert code(lambda: sim.nvmlDeviceGetUUID(migdev)) == NVML_ERROR_INVALID_ARGUMENT


def test_lookups_that_miss_are_not_found() -> None:
    sim, (dev,) = make_sim("a30-24gb")
    gi = create(sim, dev, 14, 0)
    assert code(lambda: sim.nvmlDeviceGetGpuInstanceById(dev, 5)) == NVML_ERROR_NOT_FOUND
    assert code(lambda: sim.nvmlGpuInstanceGetComputeInstanceById(gi, 0)) == NVML_ERROR_NOT_FOUND
    assert code(lambda: sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)) == NVML_ERROR_NOT_FOUND
    assert code(lambda: sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 4)) == NVML_ERROR_INVALID_ARGUMENT
    assert code(lambda: sim.nvmlDeviceGetHandleByUUID("MIG-00000000-0000-0000-0000-000000000000")) == (
        NVML_ERROR_NOT_FOUND
    )
    assert code(lambda: sim.nvmlDeviceGetGpuInstanceId(dev)) == NVML_ERROR_INVALID_ARGUMENT  # not a MIG device


def test_compute_instance_profiles_inside_a_gpu_instance() -> None:
    sim, (dev,) = make_sim("h100-80gb")
    gi = create(sim, dev, 9, 0)  # 3 compute slices, 60 SMs
    one = sim.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 0, 0)
    assert (one.sliceCount, one.instanceCount, one.multiprocessorCount, one.name) == (1, 3, 20, "MIG 1c.3g.40gb")
    assert code(lambda: sim.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 3, 0)) == NVML_ERROR_NOT_SUPPORTED
    assert code(lambda: sim.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 0, 1)) == NVML_ERROR_INVALID_ARGUMENT
    cis = [sim.nvmlGpuInstanceCreateComputeInstance(gi, 0) for _ in range(3)]
    assert [sim.nvmlComputeInstanceGetInfo(c).placement.start for c in cis] == [0, 1, 2]
    assert code(lambda: sim.nvmlGpuInstanceCreateComputeInstance(gi, 0)) == NVML_ERROR_INSUFFICIENT_RESOURCES
    assert sim.nvmlDeviceGetMaxMigDeviceCount(dev) == 7
    uuids = {sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, i)) for i in range(3)}
    assert len(uuids) == 3


def test_arrays_must_be_large_enough() -> None:
    sim, (dev,) = make_sim("h100-80gb")
    count = ctypes.c_uint(0)
    small = (sim.c_nvmlGpuInstancePlacement_t * 1)()
    assert code(lambda: sim.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 19, small, ctypes.pointer(count))) == (
        NVML_ERROR_INSUFFICIENT_SIZE
    )
    handles = (sim.c_nvmlGpuInstance_t * 6)()  # 1g.10gb allows 7
    assert code(lambda: sim.nvmlDeviceGetGpuInstances(dev, 19, handles, ctypes.pointer(count))) == (
        NVML_ERROR_INSUFFICIENT_SIZE
    )
    pl = sim.c_nvmlGpuInstancePlacement_t(0, 1)
    assert code(lambda: sim.nvmlDeviceCreateGpuInstanceWithPlacement(dev, 19, pl)) == NVML_ERROR_INVALID_ARGUMENT


def test_mig_uuids_are_unique_and_never_reused() -> None:
    sim, (dev,) = make_sim("h100-80gb")
    seen = set()
    for _ in range(20):
        gi = create(sim, dev, 19, 3)
        ci = full_ci(sim, gi)
        migdev = sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
        uuid = sim.nvmlDeviceGetUUID(migdev)
        assert uuid == sim.nvmlDeviceGetUUID(migdev)  # immutable
        seen.add(uuid)
        sim.nvmlComputeInstanceDestroy(ci)
        sim.nvmlGpuInstanceDestroy(gi)
    assert len(seen) == 20

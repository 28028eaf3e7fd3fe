"""The backend's MIG operations (NvmlBackend code, run over the simulator): sequence, cleanup, messages."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpud._private.backend import geometry
from vgpud._private.backend.base import BackendError, GpuBackend, MigInstance
from vgpud._private.backend.nvml_codes import (
    NVML_ERROR_IN_USE,
    NVML_ERROR_INSUFFICIENT_RESOURCES,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_FOUND,
)
from vgpud._private.backend.sim import SimBackend, SimNvmlError

MIG_MODELS = [m for m in geometry.all_models() if m.mig_capable]


def mig_gpu(spec: str = "h100-80gb") -> tuple[SimBackend, str]:
    backend = SimBackend(spec, "node")
    uuid = backend.discover()[0].uuid
    backend.set_mig_mode(uuid, True)
    return backend, uuid


def test_sim_backend_is_a_gpu_backend() -> None:
    backend: GpuBackend = SimBackend("h100-80gb", "node")
    assert backend.name == "sim"


@pytest.mark.parametrize("model", MIG_MODELS, ids=lambda m: m.key)
def test_profiles_read_from_nvml_match_the_table(model: geometry.GpuModel) -> None:
    backend, uuid = mig_gpu(model.key)
    got = {p.id: p for p in backend.mig_profiles(uuid)}
    assert sorted(got) == sorted(p.id for p in model.mig_profiles)
    for row in model.mig_profiles:
        p = got[row.id]
        assert (p.name, p.nvml_index, p.compute_slices, p.memory_slices) == (
            row.name,
            row.nvml_index,
            row.compute_slices,
            row.memory_slices,
        )
        assert (p.instance_count, p.memory_bytes, p.sm_count, p.starts) == (
            row.max_instances,
            row.memory_bytes,
            row.sm_count,
            row.allowed_starts,
        )


def test_create_then_rediscover_then_destroy() -> None:
    backend, uuid = mig_gpu()
    made = backend.create_mig_instance(uuid, 9, 4)
    assert (made.profile_name, made.start, made.size, made.sm_count) == ("3g.40gb", 4, 4, 60)
    assert made.memory_bytes == 40448 * geometry.MIB
    assert made.mig_uuid is not None
    assert made.mig_uuid.startswith("MIG-")
    assert made.compute_instance_id == 0
    assert backend.mig_instances(uuid) == [made]
    backend.destroy_mig_instance(uuid, made.gpu_instance_id, owned={made.mig_uuid})
    assert backend.mig_instances(uuid) == []
    assert backend.set_mig_mode(uuid, False).current is False


def test_instances_are_listed_by_start_and_include_foreign_ones() -> None:
    backend, uuid = mig_gpu()
    late = backend.create_mig_instance(uuid, 19, 6)
    early = backend.create_mig_instance(uuid, 14, 0)
    # Someone else made a GI without a compute instance (nvidia-smi mig -cgi 19 without -C).
    sim = backend.sim
    pl = sim.c_nvmlGpuInstancePlacement_t(3, 1)
    sim.nvmlDeviceCreateGpuInstanceWithPlacement(sim.nvmlDeviceGetHandleByUUID(uuid), 19, ctypes.pointer(pl))
    found = backend.mig_instances(uuid)
    assert [(i.start, i.profile_name) for i in found] == [(0, "2g.20gb"), (3, "1g.10gb"), (6, "1g.10gb")]
    assert found[0] == early
    assert found[2] == late
    assert (found[1].compute_instance_id, found[1].mig_uuid) == (None, None)
    with pytest.raises(BackendError, match=r"GPU instance \d+ was not created by vgpu \(it has no compute instance\)"):
        backend.destroy_mig_instance(uuid, found[1].gpu_instance_id, owned={early.mig_uuid or ""})


def test_no_instances_while_mig_is_off_or_absent() -> None:
    backend = SimBackend("h100-80gb,l4-24gb", "node")
    h100, l4 = (g.uuid for g in backend.discover())
    assert backend.mig_instances(h100) == []
    assert backend.mig_instances(l4) == []
    with pytest.raises(BackendError, match="MIG is off"):
        backend.mig_profiles(h100)
    with pytest.raises(BackendError, match="MIG is off"):
        backend.create_mig_instance(h100, 19, 0)


def test_mode_errors_say_what_to_do() -> None:
    backend = SimBackend("a100-40gb,h100-80gb,l4-24gb", "node")
    a100, h100, l4 = (g.uuid for g in backend.discover())
    with pytest.raises(BackendError, match=f"{l4} does not support MIG"):
        backend.set_mig_mode(l4, True)
    backend.sim.add_process(h100, 31337)
    with pytest.raises(BackendError, match=r"not turned on: the GPU is in use .*stop every process on it"):
        backend.set_mig_mode(h100, True)
    backend.sim.gpus[0].mig.reset_impossible = True
    with pytest.raises(BackendError, match=r"MIG is pending on but needs a GPU reset .*reboot"):
        backend.set_mig_mode(a100, True)
    assert backend.sim.nvmlDeviceGetMigMode(backend.sim.nvmlDeviceGetHandleByUUID(a100)) == [0, 1]
    with pytest.raises(BackendError, match="GPU GPU-nope not found"):
        backend.set_mig_mode("GPU-nope", True)


def test_mode_off_is_refused_while_instances_exist() -> None:
    backend, uuid = mig_gpu()
    made = backend.create_mig_instance(uuid, 5, 0)
    with pytest.raises(BackendError, match=r"cannot turn MIG off while MIG instances exist: 4g\.40gb .*destroy them"):
        backend.set_mig_mode(uuid, False)
    assert backend.set_mig_mode(uuid, True).current  # turning it on again is a no-op
    backend.destroy_mig_instance(uuid, made.gpu_instance_id, owned={made.mig_uuid or ""})
    mode = backend.set_mig_mode(uuid, False)
    assert (mode.current, mode.pending) == (False, False)


def test_in_use_raised_instead_of_returned_is_the_same_error(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SimBackend("h100-80gb", "node")
    uuid = backend.discover()[0].uuid

    def raises(device: Any, mode: int) -> int:
        raise SimNvmlError(NVML_ERROR_IN_USE)

    monkeypatch.setattr(backend.sim, "nvmlDeviceSetMigMode", raises)
    with pytest.raises(BackendError, match="the GPU is in use"):
        backend.set_mig_mode(uuid, True)


def test_no_permission_names_the_remedy() -> None:
    backend, uuid = mig_gpu()
    backend.sim.privileged = False
    with pytest.raises(BackendError, match=r"Insufficient Permissions\); MIG changes need root.*mig/config"):
        backend.create_mig_instance(uuid, 19, 0)


def test_create_errors_name_gpu_profile_and_cause() -> None:
    backend, uuid = mig_gpu()
    with pytest.raises(BackendError, match=r"has no MIG profile id 99; its profiles: 1g\.10gb \(id 19\)"):
        backend.create_mig_instance(uuid, 99, 0)
    with pytest.raises(BackendError, match=r"3g\.40gb cannot start at slot 2; its slots: 0, 4"):
        backend.create_mig_instance(uuid, 9, 2)
    backend.create_mig_instance(uuid, 14, 4)
    with pytest.raises(BackendError) as info:
        backend.create_mig_instance(uuid, 9, 4)
    assert str(info.value) == (
        f"{uuid} has no room for 3g.40gb at slot 4 (NVML: Insufficient Resources); free slots: 0; "
        "occupied: 4-5 2g.20gb (GPU instance 1)"
    )
    backend.create_mig_instance(uuid, 20, 0)
    with pytest.raises(BackendError, match=r"free slots: 1, 2, 3, 6; 1 of at most 1 1g\.10gb\+me instances exist"):
        backend.create_mig_instance(uuid, 20, 1)


def test_no_room_is_still_reported_when_listing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, uuid = mig_gpu()
    backend.create_mig_instance(uuid, 0, 0)

    def no_permission(device: Any) -> int:
        raise SimNvmlError(NVML_ERROR_NO_PERMISSION)

    monkeypatch.setattr(backend.sim, "nvmlDeviceGetMaxMigDeviceCount", no_permission)
    with pytest.raises(BackendError, match=r"no room for 1g\.10gb at slot 0 \(NVML: Insufficient Resources\)$"):
        backend.create_mig_instance(uuid, 19, 0)


def test_seven_small_instances_then_an_eighth_is_refused() -> None:
    backend, uuid = mig_gpu()
    made = [backend.create_mig_instance(uuid, 19, start) for start in range(7)]
    assert len({m.mig_uuid for m in made}) == 7
    with pytest.raises(BackendError, match=r"no room for 1g\.10gb at slot 3 .*free slots: none"):
        backend.create_mig_instance(uuid, 19, 3)


def test_destroy_refuses_foreign_instances_and_busy_ones() -> None:
    backend, uuid = mig_gpu()
    made = backend.create_mig_instance(uuid, 15, 2)
    assert made.mig_uuid is not None
    with pytest.raises(BackendError, match=f"was not created by vgpu \\({made.mig_uuid}\\)"):
        backend.destroy_mig_instance(uuid, made.gpu_instance_id, owned=set())
    backend.sim.add_process(made.mig_uuid, 1234)
    backend.sim.add_process(made.mig_uuid, 99)
    with pytest.raises(BackendError, match=r"has processes on it \(pids 99, 1234\); stop them"):
        backend.destroy_mig_instance(uuid, made.gpu_instance_id, owned={made.mig_uuid})
    assert backend.mig_instances(uuid) == [made]
    backend.sim.remove_process(1234)
    backend.sim.remove_process(99)
    backend.destroy_mig_instance(uuid, made.gpu_instance_id, owned={made.mig_uuid})
    with pytest.raises(BackendError, match=f"{uuid} has no MIG GPU instance {made.gpu_instance_id}"):
        backend.destroy_mig_instance(uuid, made.gpu_instance_id, owned={made.mig_uuid})


def test_failed_compute_instance_creation_destroys_the_gpu_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, uuid = mig_gpu()

    def fails(gi: Any, profile_id: int) -> Any:
        raise SimNvmlError(NVML_ERROR_INSUFFICIENT_RESOURCES)

    monkeypatch.setattr(backend.sim, "nvmlGpuInstanceCreateComputeInstance", fails)
    with pytest.raises(BackendError, match=r"nvmlGpuInstanceCreateComputeInstance failed .*destroyed again"):
        backend.create_mig_instance(uuid, 9, 0)
    assert backend.sim.gpus[0].mig.gis == {}


def test_missing_mig_device_destroys_both_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, uuid = mig_gpu()
    monkeypatch.setattr(backend.sim, "nvmlDeviceGetMaxMigDeviceCount", lambda device: 0)
    with pytest.raises(BackendError, match=r"no MIG device shows GPU instance 1; the new GPU instance was destroyed"):
        backend.create_mig_instance(uuid, 19, 0)
    assert backend.sim.gpus[0].mig.gis == {}


def test_failed_cleanup_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, uuid = mig_gpu()

    def ci_fails(gi: Any, profile_id: int) -> Any:
        raise SimNvmlError(NVML_ERROR_NOT_FOUND)

    def gi_stays(gi: Any) -> int:
        raise SimNvmlError(NVML_ERROR_IN_USE)

    monkeypatch.setattr(backend.sim, "nvmlGpuInstanceCreateComputeInstance", ci_fails)
    monkeypatch.setattr(backend.sim, "nvmlGpuInstanceDestroy", gi_stays)
    with pytest.raises(BackendError, match=r"cleaning up failed \(nvmlGpuInstanceDestroy: In use .*\): destroy"):
        backend.create_mig_instance(uuid, 19, 0)


def test_interrupt_mid_sequence_still_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, uuid = mig_gpu()

    def interrupted(gi: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(backend.sim, "nvmlGpuInstanceGetInfo", interrupted)
    with pytest.raises(KeyboardInterrupt):
        backend.create_mig_instance(uuid, 19, 0)
    assert backend.sim.gpus[0].mig.gis == {}


def test_closed_backend_refuses_mig_calls() -> None:
    backend, uuid = mig_gpu()
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.mig_instances(uuid)


# A property: random create/destroy sequences through the backend never overlap and match a plain model.

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(0, 6), st.integers(0, 8)),
        st.tuples(st.just("destroy"), st.integers(0, 9), st.just(0)),
    ),
    max_size=30,
)


def model_allows(model: geometry.GpuModel, live: list[MigInstance], profile: geometry.MigProfile, start: int) -> bool:
    """The reference's simulator rule, written out plainly."""
    used = [slot for i in live for slot in range(i.start, i.start + i.size)]
    span = range(start, start + profile.memory_slices)
    compute = sum(model.mig_profile(i.profile_id).compute_slices for i in live)
    return (
        start in profile.allowed_starts
        and not set(span) & set(used)
        and sum(1 for i in live if i.profile_id == profile.id) < profile.max_instances
        and compute + profile.compute_slices <= model.compute_slices
    )


@settings(max_examples=60, deadline=None, database=None)
@given(key=st.sampled_from(["h100-80gb", "a30-24gb"]), ops=OPS)
def test_random_create_destroy_never_overlaps(key: str, ops: list[tuple[str, int, int]]) -> None:
    model = geometry.lookup_model(key)
    backend, uuid = mig_gpu(key)
    live: list[MigInstance] = []
    for op, a, b in ops:
        if op == "create":
            profile = model.mig_profiles[a % len(model.mig_profiles)]
            expected = model_allows(model, live, profile, b)
            try:
                live.append(backend.create_mig_instance(uuid, profile.id, b))
            except BackendError:
                assert not expected, f"refused {profile.name} at {b} with {live}"
            else:
                assert expected, f"allowed {profile.name} at {b} with {live}"
        elif live:
            gone = live.pop(a % len(live))
            backend.destroy_mig_instance(uuid, gone.gpu_instance_id, owned={gone.mig_uuid or ""})
        seen = backend.mig_instances(uuid)
        assert sorted(seen, key=lambda i: i.gpu_instance_id) == sorted(live, key=lambda i: i.gpu_instance_id)
        slots = [s for i in seen for s in range(i.start, i.start + i.size)]
        assert len(slots) == len(set(slots)), "overlapping placements"
        fits_somewhere = any(model_allows(model, live, p, s) for p in model.mig_profiles for s in p.allowed_starts)
        sim, dev = backend.sim, backend.sim.nvmlDeviceGetHandleByUUID(uuid)
        capacity = sum(sim.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, p.id) for p in model.mig_profiles)
        assert (capacity > 0) == fits_somewhere

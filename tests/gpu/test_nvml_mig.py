"""NvmlBackend's MIG operations on a real GPU with MIG already enabled (these tests never change MIG mode).

They skip without a GPU, without a MIG-capable GPU in MIG mode, or without the privilege MIG changes need.
Every test leaves the GPU's instances as it found them.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vgpud._private.backend.base import BackendError, DiscoveredGpu
from vgpud._private.backend.geometry import MIB, lookup_model
from vgpud._private.backend.nvml import NvmlBackend

pytestmark = pytest.mark.gpu

MEMORY_TOLERANCE = 512 * MIB
"""Drivers report instance memory a few hundred MiB apart."""


@pytest.fixture
def mig_gpu(nvml_backend: NvmlBackend) -> DiscoveredGpu:
    """The first GPU with MIG on whose profiles this process may read."""
    gpus = [g for g in nvml_backend.discover() if g.mig_enabled]
    if not gpus:
        pytest.skip("GPU not in MIG mode: no GPU here has MIG enabled, and these tests never switch it on")
    try:
        nvml_backend.mig_profiles(gpus[0].uuid)
    except BackendError as exc:
        pytest.skip(f"cannot read MIG profiles (needs root or the MIG config capability): {exc}")
    return gpus[0]


def nvidia_smi_list() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        pytest.skip("nvidia-smi is not on PATH")
    return subprocess.run([exe, "-L"], capture_output=True, text=True, check=True, timeout=60).stdout


def test_profiles_match_the_geometry_table(nvml_backend: NvmlBackend, mig_gpu: DiscoveredGpu) -> None:
    if mig_gpu.model == "unknown":
        pytest.skip(f"{mig_gpu.name} is not in the geometry table")
    model = lookup_model(mig_gpu.model)
    nvml = {p.id: p for p in nvml_backend.mig_profiles(mig_gpu.uuid)}
    for row in model.mig_profiles:
        where = f"{model.key} {row.name} (id {row.id}){' [' + row.note + ']' if row.note else ''}"
        assert row.id in nvml, f"{where}: NVML has no such profile; it has {sorted(nvml)}"
        got = nvml[row.id]
        assert got.name == row.name, where
        assert got.nvml_index == row.nvml_index, where
        assert (got.compute_slices, got.memory_slices) == (row.compute_slices, row.memory_slices), where
        assert got.instance_count == row.max_instances, where
        assert got.starts == row.allowed_starts, where
        assert got.sm_count == row.sm_count, where
        assert abs(got.memory_bytes - row.memory_bytes) <= MEMORY_TOLERANCE, f"{where}: NVML {got.memory_bytes}"


def test_create_and_destroy_the_smallest_profile(nvml_backend: NvmlBackend, mig_gpu: DiscoveredGpu) -> None:
    uuid = mig_gpu.uuid
    before = nvml_backend.mig_instances(uuid)
    profiles = nvml_backend.mig_profiles(uuid)
    smallest = min(profiles, key=lambda p: (p.memory_slices, p.compute_slices, -p.instance_count, p.memory_bytes))
    free = smallest.free_starts(before)
    if not free:
        pytest.skip(f"no free slot for {smallest.name} on {uuid}; left as found")
    try:
        made = nvml_backend.create_mig_instance(uuid, smallest.id, free[0])
    except BackendError as exc:
        if "Insufficient Permissions" in str(exc):
            pytest.skip(f"no permission to create MIG instances: {exc}")
        raise
    try:
        assert (made.profile_id, made.start, made.size) == (smallest.id, free[0], smallest.memory_slices)
        assert made.mig_uuid is not None
        assert made.mig_uuid.startswith("MIG-")
        assert made in nvml_backend.mig_instances(uuid)
        assert made.mig_uuid in nvidia_smi_list()
    finally:
        nvml_backend.destroy_mig_instance(uuid, made.gpu_instance_id, owned={made.mig_uuid or ""})
    assert nvml_backend.mig_instances(uuid) == before


def test_instances_vgpu_did_not_make_are_never_destroyed(nvml_backend: NvmlBackend, mig_gpu: DiscoveredGpu) -> None:
    before = nvml_backend.mig_instances(mig_gpu.uuid)
    if not before:
        pytest.skip("no existing MIG instance to try")
    with pytest.raises(BackendError, match="was not created by vgpu"):
        nvml_backend.destroy_mig_instance(mig_gpu.uuid, before[0].gpu_instance_id, owned=set())
    assert nvml_backend.mig_instances(mig_gpu.uuid) == before

"""NvmlBackend against a real GPU: discovery agrees with nvidia-smi and with the geometry table."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vgpud._private.backend.base import BackendError
from vgpud._private.backend.geometry import MIB, lookup_model
from vgpud._private.backend.nvml import NvmlBackend

pytestmark = pytest.mark.gpu


@pytest.fixture
def backend(nvml_backend: NvmlBackend) -> NvmlBackend:
    if not nvml_backend.discover():
        pytest.skip("NVML works but sees no GPU")
    return nvml_backend


def nvidia_smi_gpus() -> list[tuple[str, str, int]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        pytest.skip("nvidia-smi is not on PATH")
    out = subprocess.run(
        [exe, "--query-gpu=uuid,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = []
    for line in out.strip().splitlines():
        uuid, name, memory_mib = (part.strip() for part in line.split(","))
        rows.append((uuid, name, int(memory_mib)))
    return rows


def test_discovery_matches_nvidia_smi(backend: NvmlBackend) -> None:
    gpus = backend.discover()
    smi = nvidia_smi_gpus()
    assert [(g.uuid, g.name) for g in gpus] == [(uuid, name) for uuid, name, _ in smi]
    for gpu, (_, _, memory_mib) in zip(gpus, smi, strict=True):
        assert gpu.memory_bytes // MIB == memory_mib
        assert gpu.uuid.startswith("GPU-")
        assert gpu.sm_count > 0 or gpu.model == "unknown"
    assert [g.index for g in gpus] == list(range(len(gpus)))


def test_known_models_match_the_table(backend: NvmlBackend) -> None:
    known = [g for g in backend.discover() if g.model != "unknown"]
    if not known:
        pytest.skip("no GPU here is in the geometry table")
    for gpu in known:
        model = lookup_model(gpu.model)
        assert gpu.sm_count == model.sm_count, f"{gpu.name}: NVML {gpu.sm_count} SMs, table {model.sm_count}"
        assert gpu.mig_capable == model.mig_capable
        # Totals vary by a few hundred MiB across drivers and ECC settings.
        assert abs(gpu.memory_bytes - model.memory_bytes) <= 1024 * MIB, f"{gpu.name}: {gpu.memory_bytes}"


def test_every_gpu_is_healthy(backend: NvmlBackend) -> None:
    for gpu in backend.discover():
        assert backend.healthy(gpu.uuid)
    with pytest.raises(BackendError, match="not found"):
        backend.healthy("GPU-00000000-0000-0000-0000-000000000000")

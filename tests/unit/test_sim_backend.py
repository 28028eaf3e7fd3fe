"""SimBackend: spec parsing, deterministic UUIDs, NVML-like errors, and the shared nvml code path."""

from __future__ import annotations

import re
from typing import Any

import pytest

from vgpud._private.backend import make_backend
from vgpud._private.backend.base import BackendError
from vgpud._private.backend.geometry import lookup_model
from vgpud._private.backend.nvml import NvmlBackend
from vgpud._private.backend.sim import SimBackend, SimNvml, SimNvmlError

UUID_RE = re.compile(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_spec_builds_gpus_in_order() -> None:
    gpus = SimBackend("h100-80gb:2, a100-40gb:1", "node-a").discover()
    assert [(g.index, g.model) for g in gpus] == [(0, "h100-80gb"), (1, "h100-80gb"), (2, "a100-40gb")]
    h100 = gpus[0]
    assert h100.name == "NVIDIA H100 80GB HBM3"
    assert h100.memory_bytes == 85520809984
    assert h100.sm_count == 132
    assert h100.mig_capable
    assert not h100.mig_enabled
    assert all(UUID_RE.fullmatch(g.uuid) for g in gpus)
    assert len({g.uuid for g in gpus}) == 3


def test_bare_model_means_one_and_empty_means_none() -> None:
    assert len(SimBackend("l4-24gb", "n").discover()) == 1
    assert SimBackend("", "n").discover() == []
    assert SimBackend("  ", "n").discover() == []


def test_uuids_are_deterministic_per_node() -> None:
    first = [g.uuid for g in SimBackend("h100-80gb:2", "node-a").discover()]
    again = [g.uuid for g in SimBackend("h100-80gb:2", "node-a").discover()]
    other = [g.uuid for g in SimBackend("h100-80gb:2", "node-b").discover()]
    assert first == again
    assert not set(first) & set(other)


def test_uuid_depends_on_model_at_index() -> None:
    a = SimBackend("h100-80gb", "n").discover()[0].uuid
    b = SimBackend("a100-40gb", "n").discover()[0].uuid
    assert a != b


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("v100:1", r"unknown GPU model 'v100'; known models: a100-40gb, .*h100-80gb"),
        ("h100-80gb:0", r"count '0' for h100-80gb must be a whole number from 1 to 64"),
        ("h100-80gb:65", r"count '65' .*from 1 to 64"),
        ("h100-80gb:two", r"count 'two'"),
        ("h100-80gb:-1", r"count '-1'"),
        ("h100-80gb:", r"count ''"),
        ("h100-80gb,,a30-24gb", r"empty entry"),
    ],
)
def test_bad_specs_say_what_is_accepted(spec: str, expected: str) -> None:
    with pytest.raises(BackendError, match=expected) as info:
        SimBackend(spec, "n")
    assert "bad sim spec" in str(info.value)


def test_non_mig_and_pre_ampere_models() -> None:
    t4, l4 = SimBackend("t4-16gb,l4-24gb", "n").discover()
    # T4: nvmlDeviceGetAttributes is NOT_SUPPORTED, so the SM count comes from the table.
    assert (t4.model, t4.sm_count, t4.mig_capable) == ("t4-16gb", 40, False)
    assert (l4.model, l4.sm_count, l4.mig_capable) == ("l4-24gb", 58, False)


def test_healthy_and_set_healthy() -> None:
    backend = SimBackend("a30-24gb:2", "n")
    first, second = (g.uuid for g in backend.discover())
    assert backend.healthy(first)
    backend.set_healthy(first, False)
    assert not backend.healthy(first)
    assert backend.healthy(second)
    backend.set_healthy(first, True)
    assert backend.healthy(first)


def test_lost_gpu_fails_discovery_like_nvml() -> None:
    backend = SimBackend("h100-80gb", "n")
    uuid = backend.discover()[0].uuid
    backend.set_healthy(uuid, False)
    with pytest.raises(BackendError, match="GPU 0: nvmlDeviceGetUUID failed: GPU is lost"):
        backend.discover()


def test_unknown_uuid_is_not_found() -> None:
    backend = SimBackend("h100-80gb", "n")
    with pytest.raises(BackendError, match=r"not found.*Not Found"):
        backend.healthy("GPU-00000000-0000-0000-0000-000000000000")
    with pytest.raises(BackendError, match="not found"):
        backend.set_healthy("GPU-00000000-0000-0000-0000-000000000000", False)


def test_closed_backend_refuses_calls() -> None:
    backend = SimBackend("h100-80gb", "n")
    uuid = backend.discover()[0].uuid
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.discover()
    with pytest.raises(BackendError, match="closed"):
        backend.healthy(uuid)


def test_sim_library_raises_nvml_codes() -> None:
    lib = SimNvml([])
    with pytest.raises(SimNvmlError) as info:
        lib.nvmlDeviceGetCount()
    assert info.value.value == 1  # UNINITIALIZED before nvmlInit
    lib.nvmlInit()
    assert lib.nvmlDeviceGetCount() == 0
    with pytest.raises(SimNvmlError) as info:
        lib.nvmlDeviceGetHandleByIndex(0)
    assert info.value.value == 2  # INVALID_ARGUMENT
    with pytest.raises(SimNvmlError) as info:
        lib.nvmlDeviceGetHandleByUUID("GPU-nope")
    assert (info.value.value, str(info.value)) == (6, "Not Found")


def test_sim_is_the_nvml_backend() -> None:
    backend = SimBackend("h100-80gb", "n")
    assert isinstance(backend, NvmlBackend)
    assert backend.name == "sim"


class _OldPynvml:
    """A pynvml from before str decoding: bytes names, no nvmlDeviceGetAttributes, no MIG calls."""

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

    def nvmlInit(self) -> None:  # noqa: N802 -- pynvml's names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802 -- pynvml's names
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 -- pynvml's names
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802 -- pynvml's names
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:  # noqa: N802 -- pynvml's names
        raise self.NVMLError(15)  # GPU_IS_LOST

    def nvmlDeviceGetUUID(self, handle: Any) -> bytes:  # noqa: N802 -- pynvml's names
        return b"GPU-12345678-1234-1234-1234-123456789abc\x00"

    def nvmlDeviceGetName(self, handle: Any) -> bytes:  # noqa: N802 -- pynvml's names
        return b"NVIDIA A100-SXM4-40GB"

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:  # noqa: N802 -- pynvml's names
        class Info:
            total = lookup_model("a100-40gb").memory_bytes

        return Info()


def test_old_pynvml_bytes_and_missing_calls() -> None:
    backend = NvmlBackend(_OldPynvml())  # type: ignore[arg-type]  # deliberately lacks newer calls
    (gpu,) = backend.discover()
    assert gpu.uuid == "GPU-12345678-1234-1234-1234-123456789abc"
    assert gpu.name == "NVIDIA A100-SXM4-40GB"
    assert gpu.model == "a100-40gb"
    assert gpu.sm_count == 108  # from the table
    assert (gpu.mig_capable, gpu.mig_enabled) == (True, False)
    assert not backend.healthy(gpu.uuid)  # GPU_IS_LOST is unhealthy, not an error


def test_a_pynvml_version_mismatch_is_a_backend_error_not_a_crash() -> None:
    class MismatchError(Exception):
        pass

    class OlderDriver(_OldPynvml):
        NVMLLibraryMismatchError = MismatchError

        def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:  # noqa: N802 -- pynvml's names
            return 0

        def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:  # noqa: N802 -- pynvml's names
            raise MismatchError("Unversioned function called and the pyNVML version does not match the NVML lib")

    backend = NvmlBackend(OlderDriver())  # type: ignore[arg-type]  # deliberately lacks newer calls
    (gpu,) = backend.discover()
    with pytest.raises(BackendError, match="cannot list the processes"):
        backend.processes([gpu.uuid])


def test_make_backend() -> None:
    backend = make_backend("sim", "a30-24gb:3", "n")
    assert backend.name == "sim"
    assert len(backend.discover()) == 3
    with pytest.raises(BackendError, match="needs a GPU spec"):
        make_backend("sim", None, "n")
    with pytest.raises(BackendError, match="choose nvml or sim"):
        make_backend("cuda", None, "n")


def test_close_never_raises() -> None:
    backend = SimBackend("a30-24gb", "n")
    backend.sim.nvmlShutdown()  # NVML already shut down underneath: close() must still be quiet
    backend.close()

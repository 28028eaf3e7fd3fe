"""Reading processes from NVML: memory per process, MIG devices by GPU-instance id, utilisation edge cases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from vgpud._private.backend.nvml_codes import NVML_ERROR_NOT_FOUND, NVML_ERROR_NOT_SUPPORTED
from vgpud._private.backend.nvml_processes import gpu_processes

NO_MIG = 0xFFFFFFFF


class FakeError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class Proc:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 -- pynvml's field name
    gpuInstanceId: int = NO_MIG  # noqa: N815 -- pynvml's field name
    computeInstanceId: int = NO_MIG  # noqa: N815 -- pynvml's field name


@dataclass
class Sample:
    pid: int
    smUtil: int  # noqa: N815 -- pynvml's field name


class FakeNvml:
    NVMLError = FakeError

    def __init__(
        self,
        procs: Sequence[Proc],
        *,
        mps: Sequence[Proc] | Exception = (),
        samples: Sequence[Sample] | Exception = (),
        migs: dict[int, int] | None = None,
    ) -> None:
        self.procs, self.mps, self.samples = list(procs), mps, samples
        self.migs = migs or {}
        """MIG device index -> GPU-instance id."""

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        return uuid

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Proc]:  # noqa: N802
        return self.procs

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Any) -> Sequence[Proc]:  # noqa: N802
        if isinstance(self.mps, Exception):
            raise self.mps
        return self.mps

    def nvmlDeviceGetProcessUtilization(self, handle: Any, since: int) -> Sequence[Sample]:  # noqa: N802
        assert since > 0
        if isinstance(self.samples, Exception):
            raise self.samples
        return self.samples

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:  # noqa: N802
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> int:  # noqa: N802
        if index not in self.migs:
            raise FakeError(NVML_ERROR_NOT_FOUND)
        return index

    def nvmlDeviceGetGpuInstanceId(self, mig: int) -> int:  # noqa: N802
        return self.migs[mig]

    def nvmlDeviceGetUUID(self, mig: int) -> bytes:  # noqa: N802
        return f"MIG-{mig}".encode()


def test_processes_come_with_memory_and_utilisation() -> None:
    nvml = FakeNvml([Proc(10, 1 << 30), Proc(11, None)], samples=[Sample(10, 40), Sample(10, 55), Sample(12, 9)])
    found = {u.pid: u for u in gpu_processes(nvml, "GPU-1")}
    assert found[10].memory_bytes == 1 << 30
    assert found[10].sm_percent == 55  # the latest sample window's highest
    assert found[11].memory_bytes is None
    assert found[11].sm_percent == 0
    assert all(u.gpu_uuid == "GPU-1" and not u.mig_uuid for u in found.values())


@pytest.mark.parametrize("error", [NVML_ERROR_NOT_FOUND, 0, NVML_ERROR_NOT_SUPPORTED])
def test_no_utilisation_samples_read_as_idle(error: int) -> None:
    nvml = FakeNvml([Proc(10, 5)], samples=FakeError(error))
    (use,) = gpu_processes(nvml, "GPU-1")
    assert use.sm_percent == 0


def test_mps_clients_are_listed_and_a_missing_mps_server_is_no_error() -> None:
    with_mps = FakeNvml([Proc(10, 5)], mps=[Proc(20, 7)])
    assert {u.pid for u in gpu_processes(with_mps, "GPU-1")} == {10, 20}
    without = FakeNvml([Proc(10, 5)], mps=FakeError(NVML_ERROR_NOT_SUPPORTED))
    assert {u.pid for u in gpu_processes(without, "GPU-1")} == {10}


def test_mig_processes_map_to_their_mig_device_without_utilisation() -> None:
    nvml = FakeNvml(
        [Proc(10, 100, gpuInstanceId=3), Proc(11, 200, gpuInstanceId=5), Proc(10, 50, gpuInstanceId=3)],
        migs={0: 3, 2: 5},
        samples=[Sample(10, 90)],
    )
    found = {(u.pid, u.mig_uuid): u for u in gpu_processes(nvml, "GPU-1")}
    assert set(found) == {(10, "MIG-0"), (11, "MIG-2")}
    assert found[10, "MIG-0"].memory_bytes == 150  # two contexts of one process on one instance add up
    assert found[10, "MIG-0"].sm_percent is None  # NVML has no per-process utilisation on MIG


def test_other_nvml_failures_propagate() -> None:
    class Broken(FakeNvml):
        def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Proc]:  # noqa: N802
            raise FakeError(15)

    with pytest.raises(FakeError):
        gpu_processes(Broken([]), "GPU-1")


class MismatchError(Exception):
    """pynvml's NVMLLibraryMismatchError: not an NVMLError."""


def test_a_driver_older_than_pynvmls_default_call_is_read_with_the_v2_calls() -> None:
    class OldDriver(FakeNvml):
        NVMLLibraryMismatchError = MismatchError

        def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Proc]:  # noqa: N802
            raise MismatchError("Unversioned function called and the pyNVML version does not match")

        def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any) -> list[Proc]:  # noqa: N802
            return self.procs

        def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Any) -> Sequence[Proc]:  # noqa: N802
            raise MismatchError("no _v3 either")

    (use,) = gpu_processes(OldDriver([Proc(10, 5)]), "GPU-1")
    assert (use.pid, use.memory_bytes) == (10, 5)


def test_a_mismatch_without_an_older_call_propagates_for_the_backend_to_report() -> None:
    class NoV2(FakeNvml):
        NVMLLibraryMismatchError = MismatchError

        def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Proc]:  # noqa: N802
            raise MismatchError("no _v3")

    with pytest.raises(MismatchError):
        gpu_processes(NoV2([]), "GPU-1")

"""The PyTorch cap on a real GPU: the lease's GPU found by its NVML UUID, PyTorch's allocator held to the budget.

Runs last of the GPU tests (file order) and puts the allocator's fraction back to 1, so CuPy tests are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pynvml
import pytest

from vgpu._private.runtime.torch_budget import budget_torch_for, torch_device_of
from vgpud._private.backend.nvml_codes import nvml_str

pytestmark = pytest.mark.gpu

torch: Any = pytest.importorskip("torch")

MIB = 1024**2
BUDGET = 1024 * MIB


@pytest.fixture
def device_zero() -> Iterator[tuple[str, int]]:
    """(NVML UUID, total bytes) of PyTorch's device 0, found apart from the code under test: by PCI bus id."""
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    props = torch.cuda.get_device_properties(0)
    if not all(hasattr(props, name) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        pytest.skip("this PyTorch gives no PCI location of its devices")
    bus_id = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML unavailable: {exc}")
    try:
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        uuid = nvml_str(pynvml.nvmlDeviceGetUUID(handle))
        try:
            mig = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
        except pynvml.NVMLError:
            mig = False  # GPUs without MIG answer NotSupported
    finally:
        pynvml.nvmlShutdown()
    if mig:
        pytest.skip("device 0 is a MIG instance: its PCI bus id names the parent GPU, not the instance")
    try:
        yield uuid, int(props.total_memory)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


def test_the_leases_gpu_is_found_by_its_nvml_uuid(device_zero: tuple[str, int]) -> None:
    uuid, total = device_zero
    assert torch_device_of(uuid) == (0, total)
    assert torch_device_of("GPU-00000000-0000-0000-0000-000000000000") is None


def test_pytorch_allocations_past_the_budget_are_refused(device_zero: tuple[str, int]) -> None:
    uuid, _ = device_zero
    torch.cuda.empty_cache()
    assert budget_torch_for(uuid, BUDGET) is True
    inside = torch.empty(BUDGET // 2, dtype=torch.uint8, device="cuda:0")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        torch.empty(BUDGET, dtype=torch.uint8, device="cuda:0")
    del inside
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
    beyond = torch.empty(2 * BUDGET, dtype=torch.uint8, device="cuda:0")  # lifted again: the cap was the reason
    del beyond

"""The watchdog's NVML process query on a real GPU: this process shows up with the memory it holds."""

from __future__ import annotations

import os

import pynvml
import pytest

from tests.gpu.cupy_device import cupy_or_skip
from vgpud._private.backend.nvml import NvmlBackend
from vgpud._private.backend.nvml_codes import nvml_str

pytestmark = pytest.mark.gpu


def test_this_process_is_listed_with_its_memory(nvml_backend: NvmlBackend) -> None:
    cp = cupy_or_skip()
    gpus = nvml_backend.discover()
    if not gpus:
        pytest.skip("NVML sees no GPU")
    # CUDA's device 0 need not be NVML's GPU 0 (CUDA orders fastest first, and CUDA_VISIBLE_DEVICES
    # renumbers): find the one the allocation below lands on by its PCI bus id.
    bus_id = cp.cuda.runtime.deviceGetPCIBusId(0)
    uuid = nvml_str(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)))
    gpu = next(g for g in gpus if g.uuid == uuid)
    if gpu.mig_enabled:
        pytest.skip(f"{uuid} is in MIG mode: per-process data needs a MIG device")
    block = cp.zeros(256 * 1024 * 1024, dtype=cp.uint8)  # 256 MiB held while NVML is asked
    cp.cuda.Device(0).synchronize()
    listed = nvml_backend.processes([uuid])
    assert listed is not None
    mine = [u for u in listed if u.pid == os.getpid()]
    assert mine, f"pid {os.getpid()} not among {[u.pid for u in listed]} on {uuid}"
    memory = mine[0].memory_bytes
    assert memory is not None
    assert memory >= block.nbytes
    del block

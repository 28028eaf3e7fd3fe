"""The watchdog's NVML process query on a real GPU: this process shows up with the memory it holds."""

from __future__ import annotations

import os

import pytest

from vgpud._private.backend.nvml import NvmlBackend

pytestmark = pytest.mark.gpu


def test_this_process_is_listed_with_its_memory(nvml_backend: NvmlBackend) -> None:
    cp = pytest.importorskip("cupy")
    gpus = nvml_backend.discover()
    if not gpus:
        pytest.skip("NVML sees no GPU")
    if gpus[0].mig_enabled:
        pytest.skip("GPU 0 is in MIG mode: per-process data needs a MIG device")
    block = cp.zeros(256 * 1024 * 1024, dtype=cp.uint8)  # 256 MiB held while NVML is asked
    cp.cuda.Device(0).synchronize()
    listed = nvml_backend.processes([gpus[0].uuid])
    assert listed is not None
    mine = [u for u in listed if u.pid == os.getpid()]
    assert mine, f"pid {os.getpid()} not among {[u.pid for u in listed]}"
    memory = mine[0].memory_bytes
    assert memory is not None
    assert memory >= block.nbytes
    del block

"""The per-GPU "used" metrics' NVML reading on a real GPU: memory this process holds shows up in the device's use."""

from __future__ import annotations

import pynvml
import pytest

from tests.gpu.cupy_device import cupy_or_skip
from vgpud._private.backend.nvml import NvmlBackend
from vgpud._private.backend.nvml_codes import nvml_str

pytestmark = pytest.mark.gpu


def test_every_gpu_is_read_and_held_memory_counts(nvml_backend: NvmlBackend) -> None:
    gpus = nvml_backend.discover()
    if not gpus:
        pytest.skip("NVML sees no GPU")
    before = nvml_backend.device_use([g.uuid for g in gpus])
    assert set(before) == {g.uuid for g in gpus}
    for gpu in gpus:
        use = before[gpu.uuid]
        assert use.memory_used_bytes is not None
        assert 0 <= use.memory_used_bytes <= gpu.memory_bytes
        if gpu.mig_enabled:
            assert use.utilization is None  # NOT_SUPPORTED in MIG mode
        else:
            assert use.utilization is not None
            assert 0.0 <= use.utilization <= 1.0
    cp = cupy_or_skip()
    uuid = nvml_str(
        pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByPciBusId(cp.cuda.runtime.deviceGetPCIBusId(0)))
    )
    idle = nvml_backend.device_use([uuid])[uuid].memory_used_bytes
    block = cp.zeros(512 * 1024 * 1024, dtype=cp.uint8)
    cp.cuda.Device(0).synchronize()
    held = nvml_backend.device_use([uuid])[uuid].memory_used_bytes
    assert idle is not None
    assert held is not None
    assert held - idle >= block.nbytes
    del block

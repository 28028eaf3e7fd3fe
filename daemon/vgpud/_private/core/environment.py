"""The environment a lease's processes run with on one node."""

from __future__ import annotations

from collections.abc import Mapping

from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.model import Isolation


def lease_environment(
    lease: LeaseRecord, node: str, endpoint: str, token: str = "", mps_pipes: Mapping[str, str] | None = None
) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES by GPU UUID (MIG-<uuid> for a MIG slice) plus the budget variables of the slices on `node`.

    The token goes in only when given (the acquire answer): later reads must not leak it. `mps_pipes` (GPU UUID
    -> MPS pipe directory) adds the MPS variables when the lease's slices here are time-sliced slices of one
    GPU whose node runs MPS for it (a process connects to one MPS daemon, so a lease spanning GPUs gets none).
    """
    local = [s for s in lease.slices if s.node == node]
    env = {
        "CUDA_VISIBLE_DEVICES": ",".join(s.mig_uuid or s.gpu_uuid for s in local),
        "VGPU_LEASE_ID": lease.id,
        "VGPU_ENDPOINT": endpoint,
    }
    if local:
        memory = min(s.memory_bytes for s in local)
        env["VGPU_MEMORY_LIMIT"] = str(memory)
        env["VGPU_COMPUTE_MILLI"] = str(min(s.compute_milli for s in local))
        env["CUPY_GPU_MEMORY_LIMIT"] = str(memory)
        gpus = {s.gpu_uuid for s in local}
        pipe = (mps_pipes or {}).get(next(iter(gpus)), "")
        if pipe and len(gpus) == 1 and all(s.isolation is Isolation.SHARED for s in local):
            env.update(mps_environment(pipe, sum(s.compute_milli for s in local), sum(s.memory_bytes for s in local)))
    if token:
        env["VGPU_LEASE"] = token
    return env


def mps_environment(pipe_dir: str, compute_milli: int, memory_bytes: int) -> dict[str, str]:
    """The MPS variables for a lease's processes on the GPU whose daemon listens in `pipe_dir`.

    The memory limit is keyed by ordinal 0, not by UUID: each lease process sees its one GPU as device 0,
    and the NVIDIA k8s device plugin keys it by ordinal because a limit keyed by UUID was reportedly not applied.
    The SM percentage is whole percent (MPS rounds down anyway), from 1 to 100; the limit is whole MiB, at least 1.
    """
    percent = min(100, max(1, compute_milli // 10))
    mib = max(1, memory_bytes // (1024 * 1024))
    return {
        "CUDA_MPS_PIPE_DIRECTORY": pipe_dir,
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percent),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={mib}M",
    }

"""The environment a lease's processes run with on one node."""

from __future__ import annotations

from vgpud._private.core.lease_record import LeaseRecord


def lease_environment(lease: LeaseRecord, node: str, endpoint: str, token: str = "") -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES by GPU UUID (MIG-<uuid> for a MIG slice) plus the budget variables of the slices on `node`.

    The token goes in only when given (the acquire answer): later reads must not leak it.
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
    if token:
        env["VGPU_LEASE"] = token
    return env

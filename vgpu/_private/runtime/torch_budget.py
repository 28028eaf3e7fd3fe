"""The lease's memory budget for PyTorch, applied only when the workload already uses PyTorch.

PyTorch's caching allocator has its own limit, `torch.cuda.set_per_process_memory_fraction`: a fraction of
the device's total, above which it raises its out-of-memory error. It caps only that allocator (not the
CUDA context, not CuPy), so pass the share of the budget PyTorch may have. torch is never imported here:
loading it costs seconds and GPU memory a workload that does not use it should not pay.
"""

from __future__ import annotations

import sys

from vgpu._private.errors import InvalidRequestError
from vgpu._private.runtime.memory_budget import check_limit


def torch_memory_fraction(limit_bytes: int, total_bytes: int) -> float:
    """The fraction of a `total_bytes` device that `limit_bytes` is, at most 1 (what PyTorch takes)."""
    limit = check_limit(limit_bytes)
    if isinstance(total_bytes, bool) or not isinstance(total_bytes, int) or total_bytes <= 0:
        raise InvalidRequestError(f"device memory total must be a positive number of bytes, got {total_bytes!r}")
    return min(1.0, limit / total_bytes)


def apply_torch_budget(limit_bytes: int, device_index: int, total_bytes: int) -> bool:
    """Cap PyTorch's allocator on `device_index` to `limit_bytes` of its `total_bytes`; whether it was applied.

    Applied only when torch is already imported in this process and has CUDA; otherwise nothing happens.
    """
    fraction = torch_memory_fraction(limit_bytes, total_bytes)
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return False
    torch.cuda.set_per_process_memory_fraction(fraction, device_index)
    return True


def torch_device_of(gpu_uuid: str) -> tuple[int, int] | None:
    """(PyTorch device index, total bytes) of the GPU or MIG device `gpu_uuid`, when torch is loaded and sees it.

    Matched by the UUID PyTorch reports for each device (torch >= 2.1); None without torch, CUDA or a match.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    wanted = gpu_uuid.removeprefix("GPU-").removeprefix("MIG-").lower()
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        seen = str(getattr(props, "uuid", "")).removeprefix("GPU-").removeprefix("MIG-").lower()
        if seen and seen == wanted:
            return index, int(props.total_memory)
    return None


def budget_torch_for(gpu_uuid: str, limit_bytes: int) -> bool:
    """Cap PyTorch's allocator on the lease's GPU to its budget; whether it was (torch loaded, GPU seen)."""
    found = torch_device_of(gpu_uuid)
    if found is None:
        return False
    index, total = found
    return apply_torch_budget(limit_bytes, index, total)

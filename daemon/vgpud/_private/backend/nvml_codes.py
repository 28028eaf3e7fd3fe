"""NVML constants (nvml.h, pynvml's names) shared by the nvml backend and the simulator.

Kept apart from pynvml so that hosts without a driver, and the simulator, use the same numbers.
"""

from __future__ import annotations

# Return codes.
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_IN_USE = 19
NVML_ERROR_INSUFFICIENT_RESOURCES = 23

ERROR_TEXT = {
    NVML_SUCCESS: "Success",
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_IN_USE: "In use by another client",
    NVML_ERROR_INSUFFICIENT_RESOURCES: "Insufficient Resources",
}
"""What pynvml prints for each code (nvmlErrorString for the ones pynvml does not spell out)."""

# MIG mode.
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

# GPU-instance profiles are queried by index 0 .. COUNT-1; `info.id` is what create calls take.
NVML_GPU_INSTANCE_PROFILE_COUNT = 0x12

# Compute-instance profiles by compute-slice count (NVML_COMPUTE_INSTANCE_PROFILE_<n>_SLICE).
NVML_COMPUTE_INSTANCE_PROFILE_COUNT = 0x9
CI_PROFILE_INDEX_BY_SLICES = {1: 0x0, 2: 0x1, 3: 0x2, 4: 0x3, 7: 0x4, 8: 0x5, 6: 0x6}
"""The compute-instance profile index that covers `n` compute slices, i.e. a whole GI of n slices."""
NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED = 0

NVML_VALUE_NOT_AVAILABLE_UINT = 0xFFFFFFFF
"""gpuInstanceId / computeInstanceId of a process that is not on a MIG device."""


def nvml_str(value: str | bytes) -> str:
    """Decode what pynvml returns: str on current releases, bytes on old ones; drop NUL padding."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value.rstrip("\x00").strip()


def error_code(exc: BaseException) -> int | None:
    """The NVML return code carried by a pynvml error, if any."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def error_text(code: int) -> str:
    """NVML's text for a return or activation-status code."""
    return ERROR_TEXT.get(code, f"NVML Error with code {code}")

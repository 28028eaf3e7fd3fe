"""The BackendError messages of MIG operations: each names the GPU, the profile, the cause and what to do."""

from __future__ import annotations

from vgpud._private.backend.base import BackendError, MigInstance, MigProfileInfo
from vgpud._private.backend.nvml_codes import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_IN_USE,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    error_code,
)

_HINTS = {
    NVML_ERROR_NO_PERMISSION: ("MIG changes need root, or read access to /proc/driver/nvidia/capabilities/mig/config"),
    NVML_ERROR_NOT_SUPPORTED: "MIG is off on this GPU, or the GPU has no MIG",
    NVML_ERROR_IN_USE: "compute instances or processes are still on it",
    NVML_ERROR_GPU_IS_LOST: "the GPU fell off the bus",
}


def failure(gpu: str, what: str, exc: BaseException) -> BackendError:
    """`{gpu}: {what} failed (NVML: ...)`, plus a hint for the codes that have an obvious remedy."""
    hint = _HINTS.get(error_code(exc) or 0)
    return BackendError(f"{gpu}: {what} failed (NVML: {exc})" + (f"; {hint}" if hint else ""))


def busy_mode_error(gpu: str, word: str) -> BackendError:
    """Activation status IN_USE: the GPU is not idle."""
    return BackendError(
        f"{gpu}: MIG was not turned {word}: the GPU is in use (NVML activation status: In use by another "
        "client); destroy its MIG instances and stop every process on it (CUDA programs, and monitors such "
        "as dcgm or nvsm), then retry"
    )


def reset_mode_error(gpu: str, word: str) -> BackendError:
    """Activation status RESET_REQUIRED: the change is pending a reset this platform cannot do."""
    return BackendError(
        f"{gpu}: MIG is pending {word} but needs a GPU reset that this platform cannot do (NVML activation "
        "status: GPU requires restart; a passthrough VM?); reboot the host or VM to apply it"
    )


def no_room_error(
    gpu: str, profile: MigProfileInfo, start: int, exc: BaseException, existing: list[MigInstance] | None
) -> BackendError:
    """INSUFFICIENT_RESOURCES on create: says which slots are free and what occupies the rest, when known."""
    head = f"{gpu} has no room for {profile.name} at slot {start} (NVML: {exc})"
    if existing is None:
        return BackendError(head)
    free = ", ".join(map(str, profile.free_starts(existing))) or "none"
    parts = [f"{head}; free slots: {free}"]
    same = sum(1 for i in existing if i.profile_id == profile.id)
    if same >= profile.instance_count:
        parts.append(f"{same} of at most {profile.instance_count} {profile.name} instances exist")
    if existing:
        occupied = ", ".join(
            f"{i.start}-{i.start + i.size - 1} {i.profile_name} (GPU instance {i.gpu_instance_id})" for i in existing
        )
        parts.append(f"occupied: {occupied}")
    return BackendError("; ".join(parts))

"""Simulated GPUs from a spec such as "h100-80gb:2,a100-40gb:1".

`SimBackend` is `NvmlBackend` running over `SimNvml`, a stand-in for the pynvml calls vgpud makes, with
NVML's error behaviour (NOT_FOUND, GPU_IS_LOST, NOT_SUPPORTED, UNINITIALIZED). The daemon, CI and the
demo therefore go through the same discovery and health code as a real host. UUIDs are uuid5 of
(node name, index, model), so a restarted daemon, or two daemons given the same node name, see the same GPUs.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
from dataclasses import dataclass

from vgpud._private.backend import geometry
from vgpud._private.backend.base import BackendError
from vgpud._private.backend.nvml import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    NvmlBackend,
)

MAX_COUNT = 64
"""Most GPUs one spec entry may ask for."""

_UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "https://vgpu.dev/sim-gpu")
_SPEC_HELP = 'expected MODEL[:COUNT][,MODEL[:COUNT]...] such as "h100-80gb:2,a100-40gb:1", or "" for no GPUs'
_ERROR_TEXT = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


def parse_spec(spec: str) -> list[tuple[geometry.GpuModel, int]]:
    """(model, count) per entry of a sim spec; BackendError says what is accepted."""
    if not spec.strip():
        return []
    entries: list[tuple[geometry.GpuModel, int]] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise BackendError(f"bad sim spec {spec!r}: empty entry; {_SPEC_HELP}")
        key, sep, count_text = item.partition(":")
        try:
            model = geometry.lookup_model(key)
        except geometry.UnknownModelError as exc:
            raise BackendError(f"bad sim spec {spec!r}: {exc}") from None
        count_text = count_text.strip() if sep else "1"
        if not (count_text.isascii() and count_text.isdigit() and 1 <= int(count_text) <= MAX_COUNT):
            raise BackendError(
                f"bad sim spec {spec!r}: count {count_text!r} for {model.key} "
                f"must be a whole number from 1 to {MAX_COUNT}; {_SPEC_HELP}"
            )
        entries.append((model, int(count_text)))
    return entries


def sim_uuid(node_name: str, index: int, model_key: str) -> str:
    """NVIDIA-format UUID ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx") fixed by node, index and model."""
    return f"GPU-{uuidlib.uuid5(_UUID_NAMESPACE, f'{node_name}/{index}/{model_key}')}"


class SimNvmlError(Exception):
    """What the simulated NVML raises; `.value` is the NVML return code, like pynvml.NVMLError."""

    def __init__(self, value: int) -> None:
        """Wrap an NVML return code."""
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        """The text pynvml would show for this code."""
        return _ERROR_TEXT.get(self.value, f"NVML Error with code {self.value}")


@dataclass(frozen=True, slots=True)
class _Handle:
    index: int


@dataclass(frozen=True, slots=True)
class SimMemoryInfo:
    """nvmlMemory_t: bytes."""

    total: int
    free: int
    used: int


@dataclass(frozen=True, slots=True)
class SimAttributes:
    """The part of nvmlDeviceAttributes_t vgpud reads."""

    multiprocessorCount: int  # noqa: N815 -- NVML's field name


@dataclass(slots=True)
class SimGpu:
    """One simulated physical GPU."""

    index: int
    uuid: str
    model: geometry.GpuModel
    lost: bool = False
    """True after set_healthy(uuid, False): every query answers GPU_IS_LOST."""
    mig_enabled: bool = False


class SimNvml:
    """The pynvml calls of `NvmlLibrary`, answered from the model table."""

    NVMLError: type[Exception] = SimNvmlError

    def __init__(self, gpus: list[SimGpu]) -> None:
        """Serve these GPUs; calls fail with UNINITIALIZED until nvmlInit."""
        self.gpus = gpus
        self._by_uuid = {g.uuid: g for g in gpus}
        self._initialised = 0
        self._lock = threading.Lock()

    def nvmlInit(self) -> None:  # noqa: N802 -- pynvml's names
        """Reference-counted, as NVML's."""
        with self._lock:
            self._initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802 -- pynvml's names
        """Drop one reference; UNINITIALIZED when there is none."""
        with self._lock:
            if self._initialised == 0:
                raise SimNvmlError(NVML_ERROR_UNINITIALIZED)
            self._initialised -= 1

    def _check(self) -> None:
        if self._initialised == 0:
            raise SimNvmlError(NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: object) -> SimGpu:
        self._check()
        if not isinstance(handle, _Handle) or not 0 <= handle.index < len(self.gpus):
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise SimNvmlError(NVML_ERROR_GPU_IS_LOST)
        return gpu

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 -- pynvml's names
        """Number of simulated GPUs."""
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:  # noqa: N802 -- pynvml's names
        """INVALID_ARGUMENT outside 0..count-1."""
        self._check()
        if not 0 <= index < len(self.gpus):
            raise SimNvmlError(NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> _Handle:  # noqa: N802 -- pynvml's names
        """NOT_FOUND for a UUID no simulated GPU has; GPU_IS_LOST for a lost one."""
        self._check()
        gpu = self._by_uuid.get(uuid)
        if gpu is None:
            raise SimNvmlError(NVML_ERROR_NOT_FOUND)
        if gpu.lost:
            raise SimNvmlError(NVML_ERROR_GPU_IS_LOST)
        return _Handle(gpu.index)

    def nvmlDeviceGetUUID(self, handle: object) -> str:  # noqa: N802 -- pynvml's names
        """The deterministic sim UUID."""
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: object) -> str:  # noqa: N802 -- pynvml's names
        """The model's NVML product name."""
        return self._gpu(handle).model.product_name

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> SimMemoryInfo:  # noqa: N802 -- pynvml's names
        """An idle GPU: everything free."""
        total = self._gpu(handle).model.memory_bytes
        return SimMemoryInfo(total=total, free=total, used=0)

    def nvmlDeviceGetAttributes(self, handle: object) -> SimAttributes:  # noqa: N802 -- pynvml's names
        """NOT_SUPPORTED before Ampere, as the real call."""
        gpu = self._gpu(handle)
        if gpu.model.architecture == "turing":
            raise SimNvmlError(NVML_ERROR_NOT_SUPPORTED)
        return SimAttributes(multiprocessorCount=gpu.model.sm_count)

    def nvmlDeviceGetMigMode(self, handle: object) -> list[int]:  # noqa: N802 -- pynvml's names
        """[current, pending]; NOT_SUPPORTED on models without MIG."""
        gpu = self._gpu(handle)
        if not gpu.model.mig_capable:
            raise SimNvmlError(NVML_ERROR_NOT_SUPPORTED)
        mode = int(gpu.mig_enabled)
        return [mode, mode]


class SimBackend(NvmlBackend):
    """Simulated GPUs behind the nvml backend's own discovery and health code."""

    def __init__(self, spec: str, node_name: str) -> None:
        """Build the GPUs of `spec` for `node_name`; BackendError for a bad spec."""
        gpus: list[SimGpu] = []
        for model, count in parse_spec(spec):
            for _ in range(count):
                index = len(gpus)
                gpus.append(SimGpu(index=index, uuid=sim_uuid(node_name, index, model.key), model=model))
        self.sim = SimNvml(gpus)
        super().__init__(self.sim, name="sim")

    def set_healthy(self, uuid: str, ok: bool) -> None:
        """Mark a simulated GPU lost (ok=False) or back (ok=True); BackendError for an unknown UUID."""
        for gpu in self.sim.gpus:
            if gpu.uuid == uuid:
                gpu.lost = not ok
                return
        raise BackendError(f"GPU {uuid} not found on this host (NVML: Not Found)")

"""Sim MIG state on disk, so that it survives a daemon restart as a real GPU's does.

One JSON file holds, per GPU UUID, the MIG mode and every GPU/compute instance with its IDs, placement
and MIG UUID. It is rewritten atomically (temp file, fsync, rename) after each change. Loading replays
the instances through the same rules as creating them, so a file that breaks them is reported as corrupt.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vgpud._private.backend.base import BackendError
from vgpud._private.backend.sim_devices import SimGpu
from vgpud._private.backend.sim_structs import SimNvmlError

FORMAT = 1
"""Version of the file layout."""


class _CorruptError(Exception):
    """The file does not describe a state the simulated GPUs could be in."""


def dump(gpus: list[SimGpu]) -> dict[str, Any]:
    """The MIG state of these GPUs as JSON-ready data (processes are not state: they die with the host)."""
    return {
        "format": FORMAT,
        "gpus": {
            gpu.uuid: {
                "current": gpu.mig.current,
                "pending": gpu.mig.pending,
                "gpu_instances": [
                    {
                        "id": gi.id,
                        "profile_id": gi.profile.id,
                        "start": gi.start,
                        "compute_instances": [
                            {"id": ci.id, "profile_id": ci.profile_id, "start": ci.start, "uuid": ci.uuid}
                            for ci in sorted(gi.cis.values(), key=lambda c: c.id)
                        ],
                    }
                    for gi in sorted(gpu.mig.gis.values(), key=lambda g: g.id)
                ],
            }
            for gpu in gpus
            if gpu.model.mig_capable
        },
    }


def save(path: Path, gpus: list[SimGpu]) -> None:
    """Write the state atomically: a reader (or a crash) sees the old file or the new one, never half."""
    data = json.dumps(dump(gpus), indent=1, sort_keys=True).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise BackendError(f"cannot save the simulated GPUs' MIG state to {path}: {exc}") from None


def load(path: Path, gpus: list[SimGpu]) -> None:
    """Restore MIG state saved for these GPUs (by UUID); no file means fresh GPUs. BackendError if corrupt."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BackendError(f"cannot read the simulated GPUs' MIG state from {path}: {exc}") from None
    try:
        _restore(json.loads(raw), {gpu.uuid: gpu for gpu in gpus})
    except (_CorruptError, ValueError, SimNvmlError) as exc:
        for gpu in gpus:  # leave no half-restored GPU behind
            gpu.mig.clear()
        raise BackendError(
            f"the simulated GPUs' MIG state file {path} is corrupted ({type(exc).__name__}: {exc}); "
            "fix it, or delete it to start with MIG off and no MIG instances"
        ) from None


def _field(obj: Any, key: str, kind: type) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _CorruptError(f"missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _CorruptError(f"{key!r} is not a {kind.__name__}: {value!r}")
    return value


def _restore(data: Any, by_uuid: dict[str, SimGpu]) -> None:
    if _field(data, "format", int) != FORMAT:
        raise _CorruptError(f"format {data['format']} is not {FORMAT}")
    seen: set[str] = set()
    for uuid, state in _field(data, "gpus", dict).items():
        gpu = by_uuid.get(uuid)
        if gpu is None or not gpu.model.mig_capable:
            continue  # a GPU the spec no longer has: forget it
        mig = gpu.mig
        mig.current = _field(state, "current", bool)
        mig.pending = _field(state, "pending", bool)
        for gi_state in _field(state, "gpu_instances", list):
            try:
                _restore_gpu_instance(gpu, gi_state, seen)
            except SimNvmlError as exc:
                raise _CorruptError(f"GPU {uuid}: instance {gi_state!r} cannot exist (NVML: {exc})") from None


def _restore_gpu_instance(gpu: SimGpu, gi_state: Any, seen: set[str]) -> None:
    """Recreate one GI and its CIs through the creation rules; `seen` collects MIG UUIDs (never repeated)."""
    mig = gpu.mig
    profile = mig.profile(_field(gi_state, "profile_id", int))
    start, gi_id = _field(gi_state, "start", int), _field(gi_state, "id", int)
    gi = mig.create_gi(profile.id, start, profile.memory_slices, gi_id)
    for ci_state in _field(gi_state, "compute_instances", list):
        uuid = _field(ci_state, "uuid", str)
        if not uuid.startswith("MIG-") or uuid in seen:
            raise _CorruptError(f"bad or repeated MIG UUID {uuid!r}")
        seen.add(uuid)
        ci_id, ci_start = _field(ci_state, "id", int), _field(ci_state, "start", int)
        mig.create_ci(gi, _field(ci_state, "profile_id", int), ci_id=ci_id, start=ci_start, uuid=uuid)

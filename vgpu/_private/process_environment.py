"""`lease.apply()`: put a lease's environment into this process, so in-process frameworks see only its GPUs.

CUDA reads CUDA_VISIBLE_DEVICES (and the CUDA_MPS_* variables) once, when the driver initialises in the
process (cuInit, run by the first CUDA call of PyTorch, CuPy, ...). Set before that, the process sees only
the lease's GPUs; set after, nothing changes and the process keeps every GPU it saw at start. So applying is
refused when CUDA is already initialised here and the lease's CUDA_* values differ from the current ones.

Whether CUDA is initialised is found out without loading any CUDA library: PyTorch's own flag when torch is
imported, and, when /proc/self/maps shows the driver library (libcuda) loaded already (importing CuPy loads
it), the driver itself, asked with cuDeviceGetCount: it answers CUDA_ERROR_NOT_INITIALIZED until cuInit ran,
and never initialises anything. When the driver cannot be asked, a loaded driver counts as initialised.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Final

from vgpu._private.errors import InvalidRequestError

CUDA_ALREADY_INITIALIZED: Final = "CUDA_ALREADY_INITIALIZED"
"""`lease.apply()` was refused: CUDA already runs in this process with other devices (InvalidRequestError)."""

PROC_MAPS: Final = Path("/proc/self/maps")
_CUDA_ERROR_NOT_INITIALIZED: Final = 3
_environ_lock = threading.Lock()
"""One apply or restore at a time, so the check and the change are one step for other appliers."""


def loaded_libcuda(maps: Path = PROC_MAPS) -> str | None:
    """The path of the CUDA driver library mapped into this process, or None (not loaded, or no /proc)."""
    try:
        with maps.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and Path(fields[5].strip()).name.startswith("libcuda.so"):  # noqa: PLR2004 -- a maps line with a path has six fields
                    return fields[5].strip()
    except OSError:
        return None
    return None


def driver_initialized(path: str) -> bool:
    """Whether cuInit ran in this process, asked of the driver library at `path` that is loaded already.

    RTLD_NOLOAD hands back the loaded library and never loads one; cuDeviceGetCount initialises nothing.
    True when the driver cannot be asked: a loaded driver may be initialised, and refusing is the safe side.
    """
    try:
        driver = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        count = ctypes.c_int(0)
        result = driver.cuDeviceGetCount(ctypes.byref(count))
    except (OSError, AttributeError):
        return True
    return bool(result != _CUDA_ERROR_NOT_INITIALIZED)


def _torch_initialized() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 -- a partial or stand-in torch module: the driver check still runs
        return False


def cuda_initializer() -> str | None:
    """Who initialised CUDA in this process ('PyTorch', 'the CUDA driver'), or None while nothing has."""
    if _torch_initialized():
        return "PyTorch"
    path = loaded_libcuda()
    if path is not None and driver_initialized(path):
        return f"the CUDA driver ({path})"
    return None


class AppliedEnvironment(Mapping[str, str]):
    """The variables `lease.apply()` set in this process's environment (a read-only mapping of them).

    `restore()`, or leaving a `with lease.apply():` block, puts back what was there before (unset variables
    are removed again); `previous` shows it. Restoring changes os.environ only: CUDA, once initialised,
    keeps the devices it saw.
    """

    def __init__(self, values: Mapping[str, str], previous: Mapping[str, str | None]) -> None:
        self._values = dict(values)
        self._previous = dict(previous)
        self._restored = False

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def previous(self) -> dict[str, str | None]:
        """What each variable was before (None: it was not set)."""
        return dict(self._previous)

    @property
    def restored(self) -> bool:
        """True once `restore()` ran."""
        return self._restored

    def restore(self) -> None:
        """Put the previous values back (idempotent); later changes to these variables are overwritten."""
        with _environ_lock:
            if self._restored:
                return
            self._restored = True
            for key, old in self._previous.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old

    def __enter__(self) -> AppliedEnvironment:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = " restored" if self._restored else ""
        return f"<AppliedEnvironment {sorted(self._values)}{state}>"


def _shown(value: str | None) -> str:
    return "unset (every GPU)" if value is None else repr(value)


def apply_environment(env: Mapping[str, str], *, lease_id: str) -> AppliedEnvironment:
    """Set `env` in os.environ; InvalidRequestError (CUDA_ALREADY_INITIALIZED) when CUDA would not follow.

    Refused only when a CUDA_* value changes while CUDA is initialised: the same values (e.g. a process
    started under `vgpu run` with this lease) are fine, as is anything before CUDA starts.
    """
    with _environ_lock:
        changed = sorted(key for key, value in env.items() if key.startswith("CUDA_") and os.environ.get(key) != value)
        if changed:
            who = cuda_initializer()
            if who is not None:
                differences = ", ".join(
                    f"{key} is {_shown(os.environ.get(key))}, the lease's is {env[key]!r}" for key in changed
                )
                raise InvalidRequestError(
                    f"cannot apply lease {lease_id} to this process: CUDA is already initialised here (by {who}) "
                    f"and keeps the devices it started with ({differences}). Call lease.apply() before anything "
                    "in this process touches the GPU (before the first torch.cuda or CuPy call), pass apply=True "
                    "to acquire() when torch or cupy is imported first, or run the program under `vgpu run`",
                    reason=CUDA_ALREADY_INITIALIZED,
                )
        previous = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
    return AppliedEnvironment(env, previous)


@contextlib.contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """`name=value` in os.environ for the block, then the previous value back (or unset again)."""
    with _environ_lock:
        previous = os.environ.get(name)
        os.environ[name] = value
    try:
        yield
    finally:
        with _environ_lock:
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous

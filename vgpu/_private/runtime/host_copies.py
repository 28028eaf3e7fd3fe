"""Where a checkpoint's arrays wait while the lease is suspended: host buffers, and .npy files past a limit.

Host buffers come from the backend (pinned on CuPy, so the copies are DMA transfers); once their total would
pass `host_limit_bytes`, arrays go to files in a private directory that is removed when the copies are closed
(or, failing that, when they are garbage collected).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib import format as npy_format

from vgpu._private.runtime.array_backend import ArrayBackend


@dataclass(frozen=True)
class SpilledArray:
    """One array's bytes on disk during a suspension."""

    path: Path
    nbytes: int


class HostCopies:
    """Host copies of a checkpoint's arrays, indexed like the sequence they were taken from."""

    def __init__(self, spill_root: Path | None) -> None:
        self._spill_root = spill_root
        self._copies: list[npt.NDArray[Any] | SpilledArray | None] = []
        self._spill_dir: Path | None = None
        self._remove_dir: weakref.finalize[Any, Any] | None = None
        self.host_bytes = 0
        """Bytes held in host buffers."""
        self.spilled_bytes = 0
        """Bytes written to spill files."""

    @classmethod
    def take(
        cls,
        backend: ArrayBackend,
        arrays: Sequence[Any],
        *,
        host_limit_bytes: int | None,
        spill_root: Path | None,
    ) -> HostCopies:
        """Copy every array to the host; raises with nothing left behind (buffers dropped, files removed)."""
        copies = cls(spill_root)
        try:
            copies._copy_all(backend, arrays, host_limit_bytes)
        except BaseException:
            copies.close()
            raise
        return copies

    @property
    def spill_dir(self) -> Path | None:
        """The private directory holding the spill files, while there is one."""
        return self._spill_dir

    def load(self, index: int) -> npt.NDArray[Any]:
        """The host copy of array `index`: its buffer, or the array read back from its spill file."""
        copy = self._copies[index]
        if copy is None:
            raise ValueError(f"array {index} has no host copy")
        if isinstance(copy, SpilledArray):
            with copy.path.open("rb") as file:
                return npy_format.read_array(file, allow_pickle=False)
        return copy

    def close(self) -> None:
        """Drop the host buffers and remove the spill files; safe to call twice."""
        self._copies = []
        if self._remove_dir is not None:
            self._remove_dir()
            self._remove_dir = None
            self._spill_dir = None

    def _copy_all(self, backend: ArrayBackend, arrays: Sequence[Any], host_limit_bytes: int | None) -> None:
        room = host_limit_bytes
        to_spill: list[int] = []
        # The copies run on this thread's stream (offload runs on the lease's thread, not the workload's): the
        # workload's own streams (per-thread default, non-blocking) need not be done writing these arrays yet.
        backend.synchronize()
        for index, array in enumerate(arrays):
            nbytes = int(array.nbytes)
            if room is not None and nbytes > room:
                self._copies.append(None)
                to_spill.append(index)
                continue
            buffer = backend.empty_host(tuple(array.shape), np.dtype(array.dtype))
            self._copies.append(backend.to_host(array, out=buffer))
            self.host_bytes += nbytes
            if room is not None:
                room -= nbytes
        backend.synchronize()
        for index in to_spill:
            host = backend.to_host(arrays[index])
            backend.synchronize()  # the copy may be asynchronous: it must have landed before it is written
            self._copies[index] = self._write(index, host)
            self.spilled_bytes += int(host.nbytes)

    def _write(self, index: int, host: npt.NDArray[Any]) -> SpilledArray:
        if self._spill_dir is None:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="vgpu-state-", dir=self._spill_root))
            self._remove_dir = weakref.finalize(self, shutil.rmtree, self._spill_dir, ignore_errors=True)
        path = self._spill_dir / f"array-{index}.npy"
        with path.open("wb") as file:
            npy_format.write_array(file, host, allow_pickle=False)
        return SpilledArray(path, int(host.nbytes))

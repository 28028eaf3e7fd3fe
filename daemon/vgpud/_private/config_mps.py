"""The [mps] table of vgpud's config: whether and how vgpud runs an MPS control daemon per shared GPU."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

_START_TIMEOUT_RANGE_S = (0.0, 600.0)


@dataclass(frozen=True, slots=True)
class MpsConfig:
    """The MPS control daemons ([mps] table)."""

    enabled: bool = False
    """Run one MPS control daemon per GPU in shared (time-sliced) mode and hand leases the MPS variables
    (pipe directory, SM percentage, pinned memory limit)."""
    control_binary: str = "nvidia-cuda-mps-control"
    """The control binary: a name looked up on PATH or an absolute path."""
    pipe_root: str = "/run/vgpu/mps"
    """Where the pipe directories live, one per GPU: `<pipe_root>/<gpu uuid>/`; workload processes must be able
    to reach it."""
    log_root: str = "/var/log/vgpu/mps"
    """Where the daemons' logs go, one directory per GPU: `<log_root>/<gpu uuid>/control.log`."""
    start_timeout_s: float = 10.0
    """How long one GPU's control daemon may take to start (its `control` pipe to appear); also bounds each
    command sent to a daemon (query, quit). Above 0, at most 600 seconds."""


def validate_mps(cfg: MpsConfig, fail: Callable[[str, str], NoReturn]) -> None:
    """Fail with the key and what to change for values the MPS manager cannot work with."""
    if not cfg.control_binary.strip():
        fail("mps.control_binary", "must name the binary (e.g. nvidia-cuda-mps-control) or give its absolute path")
    for key in ("pipe_root", "log_root"):
        value = getattr(cfg, key)
        if not posixpath.isabs(value):
            fail(f"mps.{key}", f"{value!r} must be an absolute path")
    low, high = _START_TIMEOUT_RANGE_S
    if not low < cfg.start_timeout_s <= high:
        fail("mps.start_timeout_s", f"{cfg.start_timeout_s} must be more than {low:g} and at most {high:g} seconds")

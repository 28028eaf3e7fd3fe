"""A cgroup (v2) per job where the host lets vgpud make one, so a stop reaches every process the job started.

A process can leave its process group (setsid) or change its environment, but not its cgroup: signalling
the cgroup's members, or writing cgroup.kill, stops them all. Job cgroups live under vgpud's own cgroup
(the unit's, with `Delegate=yes`), in `vgpu-jobs/<node name>/`. Where there is no writable cgroup v2
hierarchy, `JobCgroups` says so once and jobs fall back to process groups.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger("vgpud.jobs")

_JOBS_DIR: Final = "vgpu-jobs"


def _own_cgroup_dir(mountinfo: Path = Path("/proc/self/mountinfo"), cgroup: Path = Path("/proc/self/cgroup")) -> Path:
    """This process's cgroup v2 directory; OSError when there is no cgroup2 mount or no v2 membership."""
    mount = None
    for line in mountinfo.read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            mount = before.split(" ")[4]
            break
    if mount is None:
        raise OSError("no cgroup2 file system is mounted")
    for line in cgroup.read_text().splitlines():
        if line.startswith("0::"):
            return Path(mount) / line[3:].lstrip("/")
    raise OSError("this process is in no cgroup v2")


class JobCgroup:
    """One job's cgroup."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def procs_file(self) -> str:
        """What the spawn helper writes its pid to."""
        return str(self.path / "cgroup.procs")

    def pids(self) -> list[int]:
        """The processes in it now."""
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def signal(self, signum: int) -> None:
        """Send every member `signum` (SIGKILL through cgroup.kill where the kernel has it)."""
        if signum == signal.SIGKILL:
            try:
                (self.path / "cgroup.kill").write_text("1")
            except OSError:
                pass
            else:
                return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def remove(self) -> None:
        """Delete it once empty (a non-empty cgroup stays and is killed again at the next start)."""
        try:
            self.path.rmdir()
        except OSError as exc:
            log.warning("job cgroup not removed", path=str(self.path), error=exc.strerror)


class JobCgroups:
    """Where job cgroups are made, or None-returning when the host offers none."""

    def __init__(self, node: str, *, enabled: bool) -> None:
        self._root: Path | None = None
        if not enabled:
            return
        try:
            base = _own_cgroup_dir() / _JOBS_DIR
            base.mkdir(exist_ok=True)
            probe = base / f"probe-{os.getpid()}"
            probe.mkdir(exist_ok=True)
            probe.rmdir()
        except OSError as exc:
            log.info("jobs use process groups: no writable cgroup v2 here", error=str(exc))
            return
        self._root = base / node
        if self._root.is_dir():
            self._sweep()

    @property
    def available(self) -> bool:
        """Whether jobs get cgroups here."""
        return self._root is not None

    def create(self, name: str) -> JobCgroup | None:
        """A fresh cgroup for a job, or None (no cgroups here, or this one could not be made)."""
        if self._root is None:
            return None
        path = self._root / name
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            log.warning("job gets no cgroup", job=name, error=exc.strerror)
            return None
        return JobCgroup(path)

    def close(self) -> None:
        """Remove this node's directory of job cgroups if no job is left in it (daemon shutdown)."""
        if self._root is not None:
            with contextlib.suppress(OSError):
                self._root.rmdir()

    def _sweep(self) -> None:
        """Kill and remove jobs left by a daemon that died (their ranks cannot be followed any more)."""
        assert self._root is not None
        for left in self._root.iterdir():
            if left.is_dir():
                cgroup = JobCgroup(left)
                if cgroup.pids():
                    log.warning("stopping a job left by an earlier vgpud", cgroup=str(left))
                    cgroup.signal(signal.SIGKILL)
                else:
                    cgroup.remove()

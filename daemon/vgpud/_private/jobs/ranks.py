"""One node's ranks of a job: started as the job's user, their output read line by line, stopped together.

Each rank starts through spawn.py (join the cgroup, drop to the user, exec) in its own session; output and
exits go to one bounded queue, so a rank that writes faster than the launcher reads is paused by its pipe,
not buffered without bound here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from vgpu._private import reasons
from vgpu.api.v1 import jobs_pb2
from vgpud._private.jobs.cgroup import JobCgroup
from vgpud._private.refusal import Refusal

log = structlog.get_logger("vgpud.jobs")

LINE_MAX: Final = 1 << 16
"""Longest piece of output in one event; longer lines come in pieces."""
_QUEUE: Final = 1024
_SPAWN: Final = str(Path(__file__).with_name("spawn.py"))
_TAIL_WAIT_S: Final = 1.0
_POLL_S: Final = 0.05
_KILL_TRIES: Final = 40
"""After a rank exits, how long its last output may take to arrive before its exit is reported."""


@dataclass(frozen=True, slots=True)
class Account:
    """The user a job runs as on this host."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str


def account_of(name: str, *, allow_root: bool) -> Account:
    """The host's account of `name`; Refusal (JOB_REFUSED) when it has none or it is root and root may not run."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise Refusal(reasons.JOB_REFUSED, f"user {name!r} has no account on this node") from None
    if entry.pw_uid == 0 and not allow_root:
        raise Refusal(reasons.JOB_REFUSED, "jobs of root are not started here; set [jobs] allow_root = true to allow")
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, entry.pw_shell or "/bin/sh")


@dataclass(frozen=True, slots=True)
class RankSpec:
    """What one rank runs."""

    rank: int
    env: dict[str, str]


class NodeRanks:
    """The ranks of one job on this node."""

    def __init__(
        self, node: str, argv: list[str], *, cwd: str, account: Account, cgroup: JobCgroup | None, grace: float
    ) -> None:
        self._node = node
        self._argv = argv
        self._cwd = cwd or account.home or "/"
        self._account = account
        self._cgroup = cgroup
        self._grace = grace
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0
        self.events: asyncio.Queue[jobs_pb2.JobEvent | None] = asyncio.Queue(_QUEUE)
        """Output, exits, then None once every rank has exited."""

    @property
    def node(self) -> str:
        """The node these ranks run on."""
        return self._node

    async def start(self, ranks: list[RankSpec]) -> list[jobs_pb2.JobEvent]:
        """Start every rank; the Started events. A rank that cannot start stops those already started."""
        started = []
        try:
            for spec in ranks:
                proc = await self._spawn(spec)
                self._procs[spec.rank] = proc
                started.append(
                    jobs_pb2.JobEvent(started=jobs_pb2.RankStarted(node=self._node, rank=spec.rank, pid=proc.pid))
                )
        except BaseException:
            await self.stop()
            raise
        self._running = len(self._procs)
        for rank, proc in self._procs.items():
            self._tasks.append(asyncio.create_task(self._follow(rank, proc), name=f"job-rank-{rank}"))
        return started

    async def _spawn(self, spec: RankSpec) -> asyncio.subprocess.Process:
        account = self._account
        env = {**spec.env, "HOME": account.home, "USER": account.name, "LOGNAME": account.name, "SHELL": account.shell}
        payload = {
            "argv": self._argv,
            "env": env,
            "cwd": self._cwd,
            "uid": account.uid,
            "gid": account.gid,
            "groups": list(account.groups),
            "cgroup": self._cgroup.procs_file if self._cgroup is not None else "",
        }
        read_end, write_end = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                _SPAWN,
                str(read_end),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": os.defpath},
                pass_fds=(read_end,),
                limit=LINE_MAX,
            )
        except OSError as exc:
            raise Refusal(reasons.JOB_REFUSED, f"cannot start a rank: {exc.strerror or exc}") from None
        finally:
            os.close(read_end)
        data = json.dumps(payload).encode()
        await asyncio.to_thread(_write_all, write_end, data)
        return proc

    async def _follow(self, rank: int, proc: asyncio.subprocess.Process) -> None:
        readers = [
            asyncio.create_task(self._read(rank, proc.stdout, jobs_pb2.OUTPUT_STREAM_STDOUT)),
            asyncio.create_task(self._read(rank, proc.stderr, jobs_pb2.OUTPUT_STREAM_STDERR)),
        ]
        code = await proc.wait()
        _, pending = await asyncio.wait(readers, timeout=_TAIL_WAIT_S)
        status = 128 - code if code < 0 else code
        await self.events.put(jobs_pb2.JobEvent(exited=jobs_pb2.RankExited(node=self._node, rank=rank, status=status)))
        if pending:
            await asyncio.wait(pending)  # a background child still holds the pipe: read on until stop()
        self._running -= 1
        if self._running == 0:
            await self.events.put(None)

    async def _read(self, rank: int, stream: asyncio.StreamReader | None, kind: int) -> None:
        if stream is None:
            return
        while True:
            try:
                data = await stream.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                data = await stream.readexactly(min(exc.consumed, LINE_MAX) or LINE_MAX)
            except asyncio.IncompleteReadError as exc:
                data = exc.partial
                if data:
                    await self._put_output(rank, kind, data)
                return
            await self._put_output(rank, kind, data)

    async def _put_output(self, rank: int, kind: int, data: bytes) -> None:
        output = jobs_pb2.RankOutput(node=self._node, rank=rank, stream=kind, data=data)  # type: ignore[arg-type]  # enum ints
        await self.events.put(jobs_pb2.JobEvent(output=output))

    def signal(self, signum: int) -> None:
        """Deliver `signum` to every rank's process group (and, with a cgroup, to every process in it)."""
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signum)
        if self._cgroup is not None:
            self._cgroup.signal(signum)

    async def stop(self) -> None:
        """SIGTERM to everything the job started, SIGKILL after the grace; then forget the cgroup."""
        loop = asyncio.get_running_loop()
        if self._alive():
            self.signal(signal.SIGTERM)
            deadline = loop.time() + self._grace
            while self._alive() and loop.time() < deadline:  # noqa: ASYNC110 -- cgroup emptiness has no event here
                await asyncio.sleep(_POLL_S)
            if self._alive():
                self.signal(signal.SIGKILL)
        for proc in self._procs.values():
            if proc.returncode is None:
                await proc.wait()
        if self._cgroup is not None:
            for _ in range(_KILL_TRIES):
                if not self._cgroup.pids():
                    break
                self._cgroup.signal(signal.SIGKILL)
                await asyncio.sleep(_POLL_S)
            self._cgroup.remove()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _alive(self) -> bool:
        if any(p.returncode is None for p in self._procs.values()):
            return True
        return self._cgroup is not None and bool(self._cgroup.pids())


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError:
        pass  # the helper died before reading: its exit status and stderr say why
    finally:
        os.close(fd)

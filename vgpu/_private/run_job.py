"""CMD's process for `vgpu run`, and the loop that keeps CMD running on its lease through preemptions.

`Job` starts CMD tied to `vgpu run`: on Linux CMD gets SIGTERM when vgpu run dies, even of SIGKILL
(PR_SET_PDEATHSIG, set by a tiny launcher that then execs CMD, not by a `preexec_fn`, which is unsafe in a
process with gRPC threads). The process group is left alone, so on a terminal CMD stays in the foreground
group and Ctrl-C keeps reaching it. CMD's own children are CMD's to stop.

`Supervisor` runs on the main thread. Everything that happens (CMD's exit, a preemption notice, the resume, the
lease's loss, a signal to vgpu run) arrives as one event in one queue, so decisions are made in one place and in
order. Preemption with `--on-preempt requeue`: send CMD the preempt signal, wait for it to exit (SIGKILL shortly
before the deadline), acknowledge, wait for the resume, start CMD again with the resumed lease's environment
and VGPU_RESTART_COUNT one higher. With `--on-preempt signal` only the signal is sent: CMD attaches to the lease
(`vgpu.attach()`) and acknowledges itself (`lease.checkpoint()`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TextIO

from vgpu._private.errors import VgpuError
from vgpu._private.lease import Lease
from vgpu._private.lease_records import PreemptNotice

EXIT_LEASE_LOST: Final = 75
EXIT_NOT_EXECUTABLE: Final = 126
STOP_GRACE_S: Final = 10.0
"""After SIGTERM for a lost lease, CMD has this long before SIGKILL."""
ACK_MARGIN_S: Final = 1.0
"""A preempted CMD is killed this long before the deadline (at most a quarter of the time left), so that the
acknowledgement still reaches the daemon in time."""
PARENT_DEATH_SIGNAL: Final = signal.SIGTERM
"""What CMD gets when vgpu run dies (a chance to save; the lease expires after its TTL anyway)."""
RESTART_COUNT_ENV: Final = "VGPU_RESTART_COUNT"
"""0 for CMD's first start, then how often it was restarted after a preemption."""

OnPreempt = Literal["requeue", "signal"]

# argv: vgpu run's pid, the death signal, the program's path, CMD's argv. PR_SET_PDEATHSIG (1) survives the
# exec (except of a set-uid program); the getppid check catches a vgpu run that died before prctl took effect.
# Exit codes follow the shell's: 126 cannot set up or run, 127 not found.
_LAUNCHER = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[2])) != 0:
    sys.stderr.write("vgpu run: cannot tie the command to vgpu run: " + os.strerror(ctypes.get_errno()) + "\\n")
    os._exit(126)
if os.getppid() != int(sys.argv[1]):
    os._exit(126)
try:
    os.execv(sys.argv[3], sys.argv[4:])
except OSError as exc:
    sys.stderr.write("vgpu run: " + sys.argv[4] + ": " + str(exc.strerror or exc) + "\\n")
    os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
"""


class Job:
    """CMD as a child process: one thread waits for it (`wait`) while others may signal it (`send`)."""

    def __init__(self, program: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        """Start CMD (`program` is its resolved path); raises OSError when it cannot be started at all."""
        if sys.platform == "linux" and sys.executable:
            argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), str(int(PARENT_DEATH_SIGNAL))]
            self._proc = subprocess.Popen([*argv, program, *command], env=dict(env))  # noqa: S603 -- the user's CMD
        else:
            self._proc = subprocess.Popen(list(command), executable=program, env=dict(env))  # noqa: S603 -- as above
        self._lock = threading.Lock()
        self._reaped = False

    @property
    def pid(self) -> int:
        """CMD's process id (the launcher's until it execs CMD, in the same process)."""
        return self._proc.pid

    def send(self, signum: int) -> bool:
        """Signal CMD unless it has ended already (then False); never signals a pid that was reaped."""
        with self._lock:
            if self._reaped or self._ended_unreaped():
                return False
            try:
                os.kill(self._proc.pid, signum)
            except ProcessLookupError:
                return False
            return True

    def _ended_unreaped(self) -> bool:
        try:
            return os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def wait(self) -> int:
        """Block until CMD ends, then reap it: its exit status, shell style (128+N for signal N)."""
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT)  # ended, still unreaped: send() is safe
        with self._lock:
            self._reaped = True
            code = self._proc.wait()
        return 128 - code if code < 0 else code


@dataclass(frozen=True)
class _Exited:
    job: Job
    status: int


@dataclass(frozen=True)
class _Preempted:
    notice: PreemptNotice


@dataclass(frozen=True)
class _Resumed:
    pass


@dataclass(frozen=True)
class _Lost:
    reason: str


@dataclass(frozen=True)
class _Signalled:
    signum: int


_Event = _Exited | _Preempted | _Resumed | _Lost | _Signalled


class Mailbox:
    """The supervisor's events, posted from any thread and from signal handlers (SimpleQueue.put is reentrant).

    Made before the acquire: `resumed` and `lost` are the lease's on_resume and on_lost callbacks.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self.lost_reason: str | None = None
        """Set by the loss callback at once, before its event is read."""

    def resumed(self, _lease: Lease) -> None:
        """on_resume: the lease holds GPUs again."""
        self._queue.put(_Resumed())

    def lost(self, reason: str) -> None:
        """on_lost: the lease was revoked, expired or is otherwise gone."""
        self.lost_reason = reason
        self._queue.put(_Lost(reason))

    def put(self, event: _Event) -> None:
        """Post an event."""
        self._queue.put(event)

    def wait_resumed(self, lease: Lease) -> bool:
        """After an acknowledged preemption: True once the lease is resumed, False when it is lost meanwhile."""
        while True:
            if self.lost_reason is not None:
                return False
            if not lease.suspended and lease.status == "granted":
                return True
            event = self.get(timeout=0.5)
            if isinstance(event, _Resumed):
                return True
            if isinstance(event, _Lost):
                return False

    def get(self, timeout: float | None) -> _Event | None:
        """The next event, or None after `timeout` seconds (None: wait as long as it takes)."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


@dataclass(frozen=True)
class JobOptions:
    """What the supervisor runs, and how it answers a preemption."""

    program: str
    """CMD's resolved path."""
    command: Sequence[str]
    on_preempt: OnPreempt
    preempt_signal: int
    endpoint: str
    """What CMD dials (VGPU_ENDPOINT) when the lease's environment names no endpoint."""
    quiet: bool


def kill_delay(notice: PreemptNotice) -> float:
    """Seconds a preempted job may run before SIGKILL: up to the deadline, less a margin for the acknowledgement."""
    left = (notice.deadline - dt.datetime.now(dt.UTC)).total_seconds()
    return max(0.0, left - min(ACK_MARGIN_S, max(left, 0.0) / 4))


def _clock(when: dt.datetime) -> str:
    return when.astimezone().strftime("%H:%M:%S")


class Supervisor:
    """Runs CMD on a held lease until CMD's final exit or the lease's loss; `run()` gives the exit status."""

    def __init__(self, lease: Lease, mailbox: Mailbox, options: JobOptions, err: TextIO) -> None:
        self._lease = lease
        self._mailbox = mailbox
        self._options = options
        self._err = err
        self._name = options.command[0]
        self._job: Job | None = None
        self._restarts = 0
        self._round: PreemptNotice | None = None
        """The preemption being answered (from the signal to CMD until the resume)."""
        self._suspended = False
        """requeue: CMD ended and the preemption is acknowledged; waiting for the resume."""
        self._resumed_early = False
        """requeue: the lease resumed while CMD still ran (someone else acknowledged): restart when it ends."""
        self._kill_at: float | None = None
        """When CMD gets SIGKILL (monotonic clock): the preemption deadline, or the grace after a loss."""
        self._lost: str | None = None
        self._stopping = False
        """vgpu run got SIGINT/SIGTERM: CMD's next exit is final."""
        self._interrupts = 0
        self._terminal = sys.stdin.isatty()
        """On a terminal Ctrl-C already reaches CMD (same process group): forwarding it would send it twice."""
        self._round_over = threading.Event()
        self._finished = False

    def run(self) -> int:
        """Start CMD and answer events until the end; CMD's last exit status, or vgpu run's own code."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            status = self._start()
            if status is not None:
                return status
            watcher = threading.Thread(target=self._watch_preempts, name="vgpu-run-preempt", daemon=True)
            watcher.start()
            while True:
                wait = None if self._kill_at is None else max(0.0, self._kill_at - time.monotonic())
                event = self._mailbox.get(wait)
                if event is None:  # the kill time passed
                    self._kill_at = None
                    if self._job is not None:
                        self._job.send(signal.SIGKILL)
                    continue
                status = self._handle(event)
                if status is not None:
                    return status
        finally:
            self._finished = True
            self._round_over.set()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._mailbox.put(_Signalled(signum))  # only this here: the handler may interrupt any lock holder

    def _say(self, text: str) -> None:
        if not self._options.quiet:
            self._err.write(text + "\n")
            self._err.flush()

    def _handle(self, event: _Event) -> int | None:
        if isinstance(event, _Exited):
            return self._exited(event)
        if isinstance(event, _Preempted):
            self._preempted(event.notice)
            return None
        if isinstance(event, _Resumed):
            return self._resumed()
        if isinstance(event, _Lost):
            return self._lost_lease(event.reason)
        return self._signalled(event.signum)

    # -- CMD ----------------------------------------------------------------------------------------
    def _start(self) -> int | None:
        """Start CMD with the lease's environment now; an exit status when it cannot be."""
        lost = self._mailbox.lost_reason
        if lost is not None:
            self._err.write(f"vgpu run: the lease was lost before {self._name} started: {lost}\n")
            return EXIT_LEASE_LOST
        env = {**os.environ, **self._lease.env, RESTART_COUNT_ENV: str(self._restarts)}
        if not env.get("VGPU_ENDPOINT"):
            env["VGPU_ENDPOINT"] = self._options.endpoint
        try:
            job = Job(self._options.program, self._options.command, env)
        except OSError as exc:
            self._err.write(f"vgpu run: cannot start {self._name}: {exc.strerror or exc}\n")
            return EXIT_NOT_EXECUTABLE
        self._job = job
        threading.Thread(target=self._wait_for, args=(job,), name="vgpu-run-wait", daemon=True).start()
        return None

    def _wait_for(self, job: Job) -> None:
        self._mailbox.put(_Exited(job, job.wait()))

    def _kill_in(self, seconds: float) -> None:
        when = time.monotonic() + max(0.0, seconds)
        self._kill_at = when if self._kill_at is None else min(self._kill_at, when)

    def _exited(self, event: _Exited) -> int | None:
        if event.job is not self._job:
            return None
        self._job = None
        self._kill_at = None
        if self._lost is not None:
            self._err.write(f"vgpu run: the lease was lost, so {self._name} was stopped: {self._lost}\n")
            return EXIT_LEASE_LOST
        if self._round is None or self._options.on_preempt != "requeue" or self._stopping:
            return event.status
        if self._resumed_early:
            self._resumed_early = False
            return self._restart()
        self._suspended = True
        try:
            self._lease.ack_preempt()
        except VgpuError as exc:  # acknowledged elsewhere, withdrawn, or failed: the resume or the loss follows
            if self._mailbox.lost_reason is None and not self._lease.suspended:
                self._say(f"vgpu: acknowledging the preemption: {exc}; waiting for the lease")
        return None

    def _restart(self) -> int | None:
        self._end_round()
        self._restarts += 1
        where = ", ".join(self._lease.nodes) or self._lease.node
        self._say(f"vgpu: resumed on {where}; restarting {self._name} (restart {self._restarts})")
        return self._start()

    # -- the lease ----------------------------------------------------------------------------------
    def _watch_preempts(self) -> None:
        """Post each preemption notice once, then wait until the supervisor is done with it."""
        while not self._finished:
            try:
                notice = self._lease.wait_preempt()
            except VgpuError:
                return  # lost, released or closed: the loss callback tells the supervisor
            if notice is None:
                continue
            self._round_over.clear()
            self._mailbox.put(_Preempted(notice))
            self._round_over.wait()

    def _end_round(self) -> None:
        self._round = None
        self._round_over.set()

    def _preempted(self, notice: PreemptNotice) -> None:
        job = self._job
        if self._round is not None or self._lost is not None or self._stopping or job is None:
            return
        signame = signal.Signals(self._options.preempt_signal).name
        if not job.send(self._options.preempt_signal):
            return  # CMD ended on its own first: that exit is final
        self._round = notice
        reason = notice.reason or "no reason given"
        if self._options.on_preempt == "signal":
            self._say(
                f"vgpu: preempted ({reason}); sent {signame} to {self._name}, "
                f"which has until {_clock(notice.deadline)} to checkpoint"
            )
            return
        grace = kill_delay(notice)
        self._kill_in(grace)
        self._say(
            f"vgpu: preempted ({reason}); {self._name} has until "
            f"{_clock(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=grace))} to exit"
        )

    def _resumed(self) -> int | None:
        if self._round is None:
            return None  # not a preemption of ours (e.g. one withdrawn before anyone acted)
        if self._options.on_preempt == "signal":
            self._end_round()  # CMD acknowledged and carries on by itself
            return None
        if not self._suspended:
            self._resumed_early = True
            return None
        self._suspended = False
        return self._restart()

    def _lost_lease(self, reason: str) -> int | None:
        if self._lost is not None:
            return None
        self._lost = reason
        job = self._job
        if job is None:
            self._err.write(f"vgpu run: the lease was lost while {self._name} waited to resume: {reason}\n")
            return EXIT_LEASE_LOST
        if job.send(signal.SIGTERM):
            self._kill_in(STOP_GRACE_S)
        return None

    def _signalled(self, signum: int) -> int | None:
        """SIGINT/SIGTERM to vgpu run: pass it on (a second SIGINT kills CMD); CMD's next exit is final."""
        self._stopping = True
        job = self._job
        if job is None:
            self._say(f"vgpu: {signal.Signals(signum).name} while waiting to resume; giving the lease back")
            return 128 + signum
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                job.send(signal.SIGKILL)
                return None
            if self._terminal:
                return None
        job.send(signum)
        return None

"""`vgpu run [acquire options] -- CMD ARGS...`: run a command on a slice of the pool without writing Python.

Acquires with the SDK (waiting visibly), starts CMD with the lease's environment as the calling user, keeps the
lease alive while CMD runs, releases it when CMD ends, and exits with CMD's exit status. A revoked or expired
lease stops CMD (SIGTERM, then SIGKILL after a grace) and exits EXIT_LEASE_LOST with one line saying why.
Exit codes: CMD's own; 2 bad options; 69 no lease (refused, daemon unreachable); 75 lease lost; 126 CMD not
executable; 127 CMD not found; 128+N when CMD died of signal N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn, TextIO

from vgpu._private.errors import VgpuError
from vgpu._private.lease import Lease
from vgpu._private.lease_records import QueueInfo
from vgpu._private.loss_notice import LostCallback
from vgpu._private.pool import Pool

EXIT_USAGE: Final = 2
EXIT_NO_LEASE: Final = 69
EXIT_LEASE_LOST: Final = 75
EXIT_NOT_EXECUTABLE: Final = 126
EXIT_NOT_FOUND: Final = 127
STOP_GRACE_S: Final = 10.0
"""After SIGTERM for a lost lease, CMD has this long before SIGKILL."""


class _UsageError(Exception):
    """A bad option: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see vgpu run --help)")


def build_parser() -> argparse.ArgumentParser:
    """The options of `vgpu run`; they mirror the SDK's acquire() arguments."""
    p = _Parser(prog="vgpu run", description="Run CMD on a slice of the vgpu pool: vgpu run [options] -- CMD ARGS...")
    p.add_argument("--memory", help="GPU memory of each slice, e.g. 20GiB")
    p.add_argument("--compute", help="compute share of each slice, 0.01-1.0 (default: in proportion to memory)")
    p.add_argument("--gpus", type=int, help="whole GPUs")
    p.add_argument("--count", type=int, default=1, help="slices (default 1)")
    p.add_argument("--mig", help="a MIG profile, e.g. 3g.40gb")
    p.add_argument("--project", default="", help="project to charge (default: the default project)")
    p.add_argument("--priority", default="", help="priority class (default: the pool's default)")
    p.add_argument("--gang", action="store_true", help="all slices or none, as one unit")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--node", help="the node to run on (default: this node)")
    where.add_argument("--any-node", action="store_true", help="any node of the pool (the leader decides)")
    p.add_argument("--gpu-model", action="append", default=[], help="acceptable GPU model (repeatable)")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True, help="wait in the queue")
    p.add_argument("--timeout", type=float, default=600.0, help="longest wait for capacity, seconds (default 600)")
    p.add_argument("--quiet", action="store_true", help="print nothing of vgpu's own")
    p.add_argument("--endpoint", help="vgpud to ask (default: VGPU_ENDPOINT or the local socket)")
    return p


def _asked(args: argparse.Namespace) -> str:
    parts = [f"{k}={v}" for k, v in (("memory", args.memory), ("compute", args.compute), ("mig", args.mig)) if v]
    if args.gpus:
        parts.append(f"gpus={args.gpus}")
    return ", ".join(parts)


class _WaitLine:
    """The queue wait: a live line on a TTY, one plain line per change elsewhere."""

    def __init__(self, out: TextIO, *, quiet: bool) -> None:
        self._out = out
        self._quiet = quiet
        self._tty = out.isatty()
        self._last = ""
        self.shown = False

    def __call__(self, info: QueueInfo) -> None:
        if self._quiet:
            return
        wait = f", about {info.estimated_wait_s:.0f}s" if info.estimated_wait_s else ""
        text = f"vgpu: waiting in the queue: position {info.position} of {info.queue_length}{wait}"
        if info.reason:
            text += f" ({info.reason})"
        if text == self._last:
            return
        self._last = text
        if self._tty:
            self._out.write("\r\x1b[2K" + text)
        else:
            self._out.write(text + "\n")
        self._out.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown and self._tty and not self._quiet:
            self._out.write("\n")
            self._out.flush()


def _acquire(pool: Pool, args: argparse.Namespace, waiting: _WaitLine, on_lost: LostCallback) -> Lease:
    node: str | None = None if args.any_node else (args.node or "")
    return pool.acquire(
        memory=args.memory,
        compute=float(args.compute) if args.compute else None,
        mig=args.mig,
        count=args.count,
        gpus=args.gpus,
        gpu_model=args.gpu_model or None,
        node=node,
        gang=args.gang,
        project=args.project,
        priority=args.priority,
        wait=args.wait,
        timeout=args.timeout,
        description=f"vgpu run {' '.join(args.command)[:200]}",
        on_queued=waiting,
        on_lost=on_lost,
        raise_on_lost=False,
    )


class _Job:
    """CMD as a child process, with vgpu's signal rules: Ctrl-C forwarded once, a second one kills."""

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(command, env=env)  # noqa: S603 -- the user's own command, as the user
        self._interrupts = 0
        self._terminal = sys.stdin.isatty()
        """On a terminal, Ctrl-C already reaches CMD (same process group): forwarding it would send it twice."""
        self.lost_reason: str | None = None

    def forward(self, signum: int, _frame: object) -> None:
        """SIGINT/SIGTERM to vgpu run: pass it on (the second SIGINT kills CMD)."""
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                self.proc.kill()
                return
            if self._terminal:
                return
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop_for_loss(self, reason: str) -> None:
        """The lease is gone: SIGTERM now, SIGKILL after the grace (from the SDK's loss thread)."""
        self.lost_reason = reason
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        timer = threading.Timer(STOP_GRACE_S, self._kill_if_running)
        timer.daemon = True
        timer.start()

    def _kill_if_running(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self) -> int:
        """CMD's exit status, shell style (128+N for a signal)."""
        code = self.proc.wait()
        return 128 - code if code < 0 else code


def run(argv: Sequence[str], *, err: TextIO = sys.stderr) -> int:
    """`vgpu run ARGV`; the exit status."""
    args_list = list(argv)
    if "--" in args_list:
        split = args_list.index("--")
        options, command = args_list[:split], args_list[split + 1 :]
    else:
        options, command = args_list, []
    try:
        args = build_parser().parse_args(options)
    except _UsageError as exc:
        err.write(f"vgpu run: {exc}\n")
        return EXIT_USAGE
    args.command = command
    if not command:
        err.write("vgpu run: no command; give it after --, e.g. vgpu run --memory 20GiB -- python train.py\n")
        return EXIT_USAGE
    if not (args.memory or args.gpus or args.mig):
        err.write(
            f"vgpu run: no GPU asked for (would run {command[0]!r} without a slice); add --memory 20GiB, "
            "--gpus 1 or --mig 3g.40gb\n"
        )
        return EXIT_USAGE
    program = shutil.which(command[0]) if os.sep not in command[0] else command[0]
    if program is None or not Path(program).exists():
        err.write(f"vgpu run: {command[0]}: command not found\n")
        return EXIT_NOT_FOUND
    if not os.access(program, os.X_OK):
        err.write(f"vgpu run: {command[0]}: not executable\n")
        return EXIT_NOT_EXECUTABLE
    return _run_leased(args, command, err)


def _run_leased(args: argparse.Namespace, command: list[str], err: TextIO) -> int:
    waiting = _WaitLine(err, quiet=args.quiet)
    job: _Job | None = None
    lost: list[str] = []

    def on_lost(reason: str) -> None:
        lost.append(reason)
        if job is not None:
            job.stop_for_loss(reason)

    try:
        with Pool(args.endpoint) as pool:
            try:
                lease = _acquire(pool, args, waiting, on_lost)
            except VgpuError as exc:
                waiting.done()
                err.write(f"vgpu run: no lease ({exc.reason}): {exc}\n")
                return EXIT_NO_LEASE
            waiting.done()
            with lease:
                if not args.quiet:
                    err.write(f"vgpu: lease {lease.id} on {', '.join(lease.nodes) or lease.node}: {_asked(args)}\n")
                job = _Job(command, {**os.environ, **lease.env})
                if lost:  # lost between the grant and the start
                    job.stop_for_loss(lost[0])
                previous = {s: signal.signal(s, job.forward) for s in (signal.SIGINT, signal.SIGTERM)}
                try:
                    status = job.wait()
                finally:
                    for signum, handler in previous.items():
                        signal.signal(signum, handler)
            if job.lost_reason is not None:
                err.write(f"vgpu run: the lease was lost, so {command[0]} was stopped: {job.lost_reason}\n")
                return EXIT_LEASE_LOST
            return status
    except VgpuError as exc:
        err.write(f"vgpu run: {exc}\n")
        return EXIT_NO_LEASE


def main(argv: Sequence[str] | None = None) -> int:
    """The `vgpu` console script: `vgpu run ...` (the only subcommand so far)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write("usage: vgpu run [options] -- CMD ARGS...   (vgpu run --help for the options)\n")
        return 0 if args else EXIT_USAGE
    if args[0] != "run":
        sys.stderr.write(f"vgpu: unknown command {args[0]!r}; the command is: vgpu run [options] -- CMD ARGS...\n")
        return EXIT_USAGE
    return run(args[1:])

"""`vgpu run [acquire options] -- CMD ARGS...`: run a command on a slice of the pool without writing Python.

Acquires with the SDK (waiting visibly), starts CMD with the lease's environment as the calling user, keeps the
lease alive while CMD runs, releases it when CMD ends, and exits with CMD's exit status. A revoked or expired
lease stops CMD (SIGTERM, then SIGKILL after a grace) and exits EXIT_LEASE_LOST with one line saying why.
A preempted lease is answered as --on-preempt says: `requeue` (the default) stops CMD, acknowledges, waits for
the resume and starts CMD again (VGPU_RESTART_COUNT=N); `signal` only signals CMD, which acknowledges itself.
The child process and the preemption loop live in `vgpu._private.run_job`.
Exit codes: CMD's own (its last run's); 2 bad options; 69 no lease (refused, daemon unreachable); 75 lease
lost (also while waiting to resume); 126 CMD not executable; 127 CMD not found; 128+N when CMD died of signal
N, or when vgpu run got signal N while waiting to resume.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn, TextIO

import vgpu
from vgpu._private.errors import VgpuError
from vgpu._private.job_launch import LaunchOptions, launch
from vgpu._private.lease import Lease
from vgpu._private.lease_records import QueueInfo
from vgpu._private.pool import Pool, client_of
from vgpu._private.run_job import EXIT_LEASE_LOST, EXIT_NOT_EXECUTABLE, JobOptions, Mailbox, Supervisor

EXIT_USAGE: Final = 2
EXIT_NO_LEASE: Final = 69
EXIT_NOT_FOUND: Final = 127


class _UsageError(Exception):
    """A bad option: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see vgpu run --help)")


def _signal_number(text: str) -> int:
    """A signal by name (SIGUSR1, USR1, usr1) or number, for --preempt-signal."""
    name = text.strip().upper()
    try:
        if name.isdigit():
            return signal.Signals(int(name)).value
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"].value
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a signal; give a name such as SIGTERM or USR1, or a number"
        ) from None


def _seconds(text: str) -> int:
    """A whole number of seconds >= 1, for --ttl."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds >= 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The options of `vgpu run`; they mirror the SDK's acquire() arguments."""
    p = _Parser(
        prog="vgpu run",
        description="Run CMD on a slice of the vgpu pool: vgpu run [options] -- CMD ARGS...",
        epilog="Exit status: CMD's (its last run's; across nodes, the first failing rank's); 2 bad options; 69 no "
        "lease; 70 a node refused the job or was lost; 75 the lease was lost (revoked or expired, also while "
        "waiting to resume); 126 CMD not executable; 127 CMD not found; 128+N when CMD died of signal N, or vgpu "
        "run got signal N while waiting to resume.",
    )
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
    p.add_argument(
        "--ttl",
        type=_seconds,
        metavar="SECONDS",
        help="the lease expires this long after vgpu run stops heartbeating, e.g. when it is killed "
        "(default: the daemon's)",
    )
    p.add_argument(
        "--on-preempt",
        choices=("requeue", "signal"),
        default="requeue",
        help="when the pool takes the GPUs back: requeue (default) sends CMD --preempt-signal, waits for it to "
        "exit (SIGKILL just before the deadline), waits for the lease to resume and starts CMD again with "
        "VGPU_RESTART_COUNT one higher; signal only sends the signal (CMD attaches with vgpu.attach() and "
        "calls lease.checkpoint() itself)",
    )
    p.add_argument(
        "--preempt-signal",
        type=_signal_number,
        default=signal.SIGTERM.value,
        metavar="SIGNAL",
        help="the signal CMD gets when preempted: a name (SIGUSR1, USR1) or a number (default SIGTERM)",
    )
    jobs = p.add_argument_group("jobs on several nodes (started by the node daemons)")
    jobs.add_argument(
        "--per-gpu",
        action="store_true",
        help="one process per slice with RANK, LOCAL_RANK, WORLD_SIZE and its own CUDA_VISIBLE_DEVICES "
        "(default: one per node, with torchrun's PET_* variables)",
    )
    jobs.add_argument("--keep-going", action="store_true", help="a failing rank does not stop the others")
    jobs.add_argument("--output", type=Path, metavar="DIR", help="write each rank's output to DIR/rank-N.out/.err")
    jobs.add_argument(
        "--ray",
        action="store_true",
        help="start a Ray cluster over the lease (head on the first node, workers on the others) and run CMD "
        "there as its driver, with RAY_ADDRESS set",
    )
    jobs.add_argument("--ray-args", default="", metavar="ARGS", help="extra arguments for every `ray start`")
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


def _acquire(pool: Pool, args: argparse.Namespace, waiting: _WaitLine, mailbox: Mailbox) -> Lease:
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
        ttl=args.ttl,
        description=f"vgpu run {' '.join(args.command)[:200]}",
        on_queued=waiting,
        on_resume=mailbox.resumed,
        on_lost=mailbox.lost,
        raise_on_lost=False,
    )


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
    problem = _usage_problem(args)
    if problem:
        err.write(f"vgpu run: {problem}\n")
        return EXIT_USAGE
    program = shutil.which(command[0]) if os.sep not in command[0] else command[0]
    if program is None or not Path(program).exists():
        err.write(f"vgpu run: {command[0]}: command not found\n")
        return EXIT_NOT_FOUND
    if not os.access(program, os.X_OK):
        err.write(f"vgpu run: {command[0]}: not executable\n")
        return EXIT_NOT_EXECUTABLE
    return _run_leased(args, str(Path(program).absolute()), err)


def _run_leased(args: argparse.Namespace, program: str, err: TextIO) -> int:
    waiting = _WaitLine(err, quiet=args.quiet)
    mailbox = Mailbox()
    try:
        with Pool(args.endpoint) as pool:
            try:
                lease = _acquire(pool, args, waiting, mailbox)
            except VgpuError as exc:
                waiting.done()
                err.write(f"vgpu run: no lease ({exc.reason}): {exc}\n")
                return EXIT_NO_LEASE
            waiting.done()
            with lease:
                if not args.quiet:
                    err.write(f"vgpu: lease {lease.id} on {', '.join(lease.nodes) or lease.node}: {_asked(args)}\n")
                if _through_daemons(lease, args):
                    return _launch(pool, lease, mailbox, args, err)
                options = JobOptions(
                    program=program,
                    command=args.command,
                    on_preempt=args.on_preempt,
                    preempt_signal=args.preempt_signal,
                    endpoint=pool.endpoint,
                    quiet=args.quiet,
                )
                return Supervisor(lease, mailbox, options, err).run()
    except VgpuError as exc:
        err.write(f"vgpu run: {exc}\n")
        return EXIT_NO_LEASE


def _usage_problem(args: argparse.Namespace) -> str:
    """What is wrong with the options and command, in one line ("" when nothing)."""
    if not args.command:
        return "no command; give it after --, e.g. vgpu run --memory 20GiB -- python train.py"
    if args.ray_args and not args.ray:
        return "--ray-args needs --ray"
    if args.ray and args.per_gpu:
        return "--ray and --per-gpu do not go together: Ray places one task per GPU itself"
    if not (args.memory or args.gpus or args.mig):
        return (
            f"no GPU asked for (would run {args.command[0]!r} without a slice); add --memory 20GiB, "
            "--gpus 1 or --mig 3g.40gb"
        )
    return ""


def _through_daemons(lease: Lease, args: argparse.Namespace) -> bool:
    """Whether the node daemons start CMD: several nodes, another node, or options only they offer."""
    here = bool(lease.env.get("CUDA_VISIBLE_DEVICES"))
    return len(lease.nodes) > 1 or not here or args.per_gpu or args.output is not None or args.ray


def _launch(pool: Pool, lease: Lease, mailbox: Mailbox, args: argparse.Namespace, err: TextIO) -> int:
    """The job through the node daemons; requeued after a preemption as --on-preempt says."""
    command = list(args.command)
    if args.ray:
        ray_args = ["--ray-args", args.ray_args] if args.ray_args else []
        command = [sys.executable, "-m", "vgpu._private.ray_on_lease", *ray_args, "--", *command]
    restarts = 0
    while True:
        options = LaunchOptions(
            command=command,
            per_gpu=args.per_gpu and not args.ray,
            keep_going=args.keep_going,
            output=args.output,
            quiet=args.quiet,
            first_rank_ends_job=args.ray,
            preempt_signal=args.preempt_signal,
            stop_on_preempt=args.on_preempt == "requeue",
            restart_count=restarts,
        )
        result = launch(client_of(pool), lease, options, err)
        if mailbox.lost_reason is not None:
            err.write(f"vgpu run: the lease was lost, so the job was stopped on every node: {mailbox.lost_reason}\n")
            return EXIT_LEASE_LOST
        if not result.preempted or args.on_preempt != "requeue":
            return result.status
        try:
            lease.ack_preempt()
        except VgpuError as exc:
            err.write(f"vgpu: could not acknowledge the preemption ({exc.reason}); waiting for the daemon\n")
        if not mailbox.wait_resumed(lease):
            err.write(f"vgpu run: the lease was lost while the job waited to resume: {mailbox.lost_reason}\n")
            return EXIT_LEASE_LOST
        restarts += 1
        if not args.quiet:
            err.write(f"vgpu: resumed on {', '.join(lease.nodes)}; restarting the job (restart {restarts})\n")


def main(argv: Sequence[str] | None = None) -> int:
    """The `vgpu` console script: `vgpu run ...` (the only subcommand so far)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write("usage: vgpu run [options] -- CMD ARGS...   (vgpu run --help for the options)\n")
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        sys.stdout.write(f"vgpu {vgpu.__version__}\n")
        return 0
    if args[0] != "run":
        sys.stderr.write(f"vgpu: unknown command {args[0]!r}; the command is: vgpu run [options] -- CMD ARGS...\n")
        return EXIT_USAGE
    return run(args[1:])

"""`vgpu run` for a lease the launcher's host cannot run alone: the daemons start CMD on every node of it.

The launcher asks its own vgpud (RunJob); that daemon starts node rank 0, then the others, over mutual TLS
with node certificates, and streams every rank's output back here, where each line gets its node's (and,
with --per-gpu, its rank's) prefix, or goes to per-rank files with --output. Ctrl-C is forwarded to every
rank (a second one kills them); the launcher's death ends the call, which stops every rank.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, TextIO

import grpc

from vgpu._private.errors import VgpuError
from vgpu._private.lease import Lease
from vgpu._private.run_job import kill_delay
from vgpu._private.sync_client import SyncClient
from vgpu.api.v1 import jobs_pb2

EXIT_NODE_FAILED: Final = 70
"""A node refused the job or was lost (before any rank failed); the daemon uses the same status."""
_STREAM_DEADLINE_S: Final = 30 * 86_400.0
_STOP: Final = object()


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """What `vgpu run` asked for beyond the lease."""

    command: list[str]
    per_gpu: bool = False
    keep_going: bool = False
    output: Path | None = None
    quiet: bool = False
    first_rank_ends_job: bool = False
    preempt_signal: int | None = None
    """Sent to every rank when the lease is asked to yield; they have until just before the deadline to exit
    (then SIGKILL). None: preemption is left to the ranks' own attached leases."""
    stop_on_preempt: bool = True
    """After the preempt signal, SIGKILL whatever still runs just before the deadline (for a requeue); false
    leaves the ranks running (they acknowledge through their own attached leases)."""
    restart_count: int = 0


@dataclass(slots=True)
class LaunchResult:
    """How a launch ended."""

    status: int
    preempted: bool = False
    """The lease was asked to yield while the job ran (the ranks got the preempt signal)."""


class _PreemptWatch:
    """Waits for the lease's preemption notice and passes the preempt signal to every rank."""

    def __init__(self, lease: Lease, inputs: _Inputs, options: LaunchOptions, err: TextIO) -> None:
        assert options.preempt_signal is not None
        self._lease = lease
        self._kill = options.stop_on_preempt
        self._inputs = inputs
        self._signum = options.preempt_signal
        self._err = err
        self._quiet = options.quiet
        self._done = threading.Event()
        self.preempted = False
        self._timer: threading.Timer | None = None
        self._thread = threading.Thread(target=self._watch, name="vgpu-run-preempt", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                notice = self._lease.wait_preempt(timeout=0.5)
            except VgpuError:
                return  # lost or released: the loss callback tells run_command
            if notice is None or self._done.is_set():
                continue
            self.preempted = True
            self._inputs.signal(self._signum)
            grace = kill_delay(notice)
            if self._kill:
                self._timer = threading.Timer(grace, self._inputs.signal, args=(signal.SIGKILL,))
                self._timer.daemon = True
                self._timer.start()
            if not self._quiet:
                name = signal.Signals(self._signum).name
                then = "exit" if self._kill else "checkpoint"
                self._err.write(
                    f"vgpu: preempted ({notice.reason or 'no reason given'}); sent {name} to every rank, which "
                    f"have {grace:.0f}s to {then}\n"
                )
            return

    def stop(self) -> None:
        self._done.set()
        if self._timer is not None:
            self._timer.cancel()


class _Inputs:
    """The call's request stream: the start, then signals, until closed."""

    def __init__(self, start: jobs_pb2.JobStart) -> None:
        self._queue: queue.Queue[object] = queue.Queue(64)
        self._queue.put(jobs_pb2.RunJobRequest(start=start))

    def signal(self, signum: int) -> None:
        with contextlib.suppress(queue.Full):  # full: the ranks have been told already
            self._queue.put_nowait(jobs_pb2.RunJobRequest(signal=signum))

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)

    def __iter__(self) -> Iterator[jobs_pb2.RunJobRequest]:
        while True:
            item = self._queue.get()
            if item is _STOP or not isinstance(item, jobs_pb2.RunJobRequest):
                return
            yield item


@dataclass(slots=True)
class _Output:
    """Where ranks' lines go: the terminal with a prefix, or per-rank files."""

    per_gpu: bool
    directory: Path | None
    out: BinaryIO
    err: BinaryIO
    files: dict[tuple[int, int], BinaryIO] = field(default_factory=dict)

    def write(self, output: jobs_pb2.RankOutput) -> None:
        stderr = output.stream == jobs_pb2.OUTPUT_STREAM_STDERR
        if self.directory is not None:
            key = (output.rank, int(stderr))
            target = self.files.get(key)
            if target is None:
                name = f"rank-{output.rank}.{'err' if stderr else 'out'}"
                target = (self.directory / name).open("ab")
                self.files[key] = target
            target.write(output.data)
            target.flush()
            return
        label = f"[{output.node} rank {output.rank}] " if self.per_gpu else f"[{output.node}] "
        stream = self.err if stderr else self.out
        stream.write(label.encode() + output.data)
        stream.flush()

    def close(self) -> None:
        for target in self.files.values():
            target.close()


class _Signals:
    """Ctrl-C and SIGTERM to every rank; a second Ctrl-C kills them."""

    def __init__(self, inputs: _Inputs) -> None:
        self._inputs = inputs
        self._interrupts = 0
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            self._inputs.signal(signal.SIGKILL if self._interrupts > 1 else signal.SIGINT)
            return
        self._inputs.signal(signum)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def launch(client: SyncClient, lease: Lease, options: LaunchOptions, err: TextIO = sys.stderr) -> LaunchResult:
    """Run the job through the daemons: the first failing rank's status (0 when all succeed)."""
    if options.output is not None:
        options.output.mkdir(parents=True, exist_ok=True)
    start = jobs_pb2.JobStart(
        lease_id=lease.id,
        token=lease.token,
        argv=options.command,
        env=dict(os.environ),
        cwd=str(Path.cwd()),
        per_gpu=options.per_gpu,
        keep_going=options.keep_going,
        first_rank_ends_job=options.first_rank_ends_job,
        restart_count=options.restart_count,
    )
    inputs = _Inputs(start)
    watch = None
    if options.preempt_signal is not None:
        watch = _PreemptWatch(lease, inputs, options, err)
    try:
        status = _stream(client, lease, inputs, options, err)
    finally:
        if watch is not None:
            watch.stop()
    return LaunchResult(status, preempted=watch is not None and watch.preempted)


def _stream(client: SyncClient, lease: Lease, inputs: _Inputs, options: LaunchOptions, err: TextIO) -> int:
    """The RunJob call: output to its places, progress lines, and the job's status."""
    output = _Output(options.per_gpu, options.output, sys.stdout.buffer, sys.stderr.buffer)
    expected = len(lease.slices) if options.per_gpu else len(lease.nodes)
    started: list[jobs_pb2.RankStarted] = []
    handlers = _Signals(inputs)
    try:
        call = client.run_job(iter(inputs), timeout=_STREAM_DEADLINE_S)
        for response in call:
            event = response.event
            kind = event.WhichOneof("event")
            if kind == "output":
                output.write(event.output)
            elif kind == "started":
                started.append(event.started)
                if len(started) == expected and not options.quiet:
                    err.write(_started_line(started) + "\n")
            elif kind == "exited" and event.exited.status != 0 and not options.quiet:
                err.write(f"vgpu: rank {event.exited.rank} on {event.exited.node} exited with {event.exited.status}\n")
            elif kind == "node_failed":
                err.write(f"vgpu run: {event.node_failed.message}\n")
            elif kind == "finished":
                return _finished(event.finished, options, err)
    except grpc.RpcError as exc:
        failure = client.error(exc, timeout=None)
        err.write(f"vgpu run: the job did not run ({failure.reason}): {failure}\n")
        return EXIT_NODE_FAILED
    except VgpuError as exc:
        err.write(f"vgpu run: the job did not run ({exc.reason}): {exc}\n")
        return EXIT_NODE_FAILED
    finally:
        inputs.close()
        handlers.restore()
        output.close()
    err.write("vgpu run: the job ended without a final status\n")
    return EXIT_NODE_FAILED


def _started_line(started: list[jobs_pb2.RankStarted]) -> str:
    nodes = sorted({s.node for s in started})
    meet = next((f"{s.master_addr}:{s.master_port}" for s in started if s.master_addr), "")
    return f"vgpu: {len(started)} rank(s) started on {', '.join(nodes)}; rendezvous at {meet}"


def _finished(finished: jobs_pb2.JobFinished, options: LaunchOptions, err: TextIO) -> int:
    if finished.status != 0 and not options.quiet:
        err.write(f"vgpu run: {finished.message} (status {finished.status})\n")
    return finished.status

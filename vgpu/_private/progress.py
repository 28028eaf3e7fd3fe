"""The wait of a queued `acquire()`, shown to the person running it (the `progress=` argument).

A waiting acquire can sit in the queue for minutes; without a sign of life it looks hung. On a terminal
the wait is one live line rewritten in place and cleared when the wait ends; elsewhere (a log file, CI)
every change is one plain line, and the end is one more. Plain ANSI (carriage return, erase line) keeps the
terminal clean whatever else the process prints afterwards; rich's Live would take over the terminal.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Final, TextIO

from vgpu._private.errors import InvalidRequestError, VgpuError
from vgpu._private.lease_records import QueueInfo
from vgpu._private.units import format_compute, format_memory
from vgpu.api.v1 import types_pb2, workload_pb2

CLEAR_LINE: Final = "\r\x1b[2K"
"""Back to the start of the line and erase it: how the live line is rewritten and cleared."""

OnQueued = Callable[[QueueInfo], object]


def describe_request(request: workload_pb2.AcquireRequest) -> str:
    """What was asked, as the acquire arguments read: 'memory=20GiB compute=0.5', 'gpus=2', 'mig=3g.40gb'."""
    res = request.resources
    parts: list[str] = []
    if res.isolation == types_pb2.ISOLATION_WHOLE:
        parts.append(f"gpus={_span(res.count, res.count_max)}")
    else:
        if res.mig_profile:
            parts.append(f"mig={res.mig_profile}")
        elif res.isolation == types_pb2.ISOLATION_MIG:
            parts.append("isolation=mig")
        if res.memory_bytes:
            parts.append(f"memory={format_memory(res.memory_bytes)}")
        if res.compute_milli:
            high = format_compute(res.compute_milli_max) if res.compute_milli_max else ""
            parts.append(f"compute={format_compute(res.compute_milli)}{'..' + high if high else ''}")
        if res.count != 1 or res.count_max:
            parts.append(f"count={_span(res.count, res.count_max)}")
    if res.gpu_models:
        parts.append(f"gpu_model={','.join(res.gpu_models)}")
    return " ".join(parts) or "a slice"


def _span(low: int, high: int) -> str:
    return f"{low}..{high}" if high else str(low)


class WaitProgress:
    """Shows one acquire's place in the queue on `stream`; call it with each QueueInfo, then `finish()`.

    `live`: rewrite one line in place (a terminal) instead of one line per change; by default, whether
    `stream` is a terminal. Safe to call from the thread or task that runs the acquire.
    """

    def __init__(self, stream: TextIO, asked: str, *, live: bool | None = None) -> None:
        self._stream = stream
        self._asked = asked
        self._live = _is_terminal(stream) if live is None else live
        self._lock = threading.Lock()
        self._last = ""
        self._started = time.monotonic()
        self.shown = False
        """Whether a line was written (the acquire had to wait)."""

    def __call__(self, info: QueueInfo) -> None:
        """Show a new queue position (written only when the text changes)."""
        text = f"vgpu: waiting for {self._asked}: position {info.position} of {info.queue_length}"
        if info.estimated_wait_s:
            text += f", about {info.estimated_wait_s:.0f}s"
        if info.reason:
            text += f" ({info.reason})"
        with self._lock:
            if text == self._last:
                return
            self._last = text
            if self._live:
                self._write(CLEAR_LINE + _fit(text))
            else:
                self._write(text + "\n")
            self.shown = True

    def wrap(self, on_queued: OnQueued | None) -> OnQueued:
        """An on_queued callback that shows the line, then calls the caller's own (returning what it returns)."""

        def show_then_call(info: QueueInfo) -> object:
            self(info)
            return on_queued(info) if on_queued is not None else None

        return show_then_call

    def finish(self, error: BaseException | None = None) -> None:
        """The wait ended (granted, or `error`): clear the live line, or say how it ended in one plain line."""
        with self._lock:
            if not self.shown:
                return
            self.shown = False
            if self._live:
                self._write(CLEAR_LINE)
                return
            waited = time.monotonic() - self._started
            if error is None:
                self._write(f"vgpu: granted {self._asked} after {waited:.0f}s\n")
            else:
                why = error.reason if isinstance(error, VgpuError) else type(error).__name__
                self._write(f"vgpu: stopped waiting for {self._asked} after {waited:.0f}s ({why})\n")

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not break the acquire
            pass


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):  # closed, or a stand-in without a file behind it
        return False


def _fit(text: str) -> str:
    """`text` cut to the terminal's width: a wrapped line could not be erased in place."""
    width = shutil.get_terminal_size().columns
    return text if len(text) < width else text[: max(width - 2, 1)] + "…"


def start_progress(
    progress: bool | None,
    on_queued: OnQueued | None,
    request: workload_pb2.AcquireRequest,
    stream: TextIO | None = None,
) -> WaitProgress | None:
    """The progress display an acquire should use, or None for none.

    None (the default) shows it when stderr is a terminal and the caller gave no on_queued of its own (a
    caller with one, such as `vgpu run`, shows the wait itself); True always (plain lines off a terminal);
    False never. `stream` defaults to the current sys.stderr.
    """
    if progress is not None and not isinstance(progress, bool):
        raise InvalidRequestError(f"progress must be True, False or None (show it on a terminal), got {progress!r}")
    if not request.wait or progress is False:
        return None
    out = sys.stderr if stream is None else stream
    if out is None:  # no stderr at all (pythonw, some daemons)
        return None
    if progress is None and (on_queued is not None or not _is_terminal(out)):
        return None
    return WaitProgress(out, describe_request(request))

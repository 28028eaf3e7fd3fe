"""The wait of a queued acquire on stderr: the renderer against fake streams, and its wiring into acquire."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator

import grpc
import pytest

import vgpu
from tests.unit.test_sdk_support import Fail, FakeWorkload, fake_daemon, granted, queued
from vgpu._private import reasons
from vgpu._private.acquire_request import build_acquire_request
from vgpu._private.progress import CLEAR_LINE, WaitProgress, describe_request, start_progress

WAITING = "vgpu: waiting for memory=20GiB compute=0.5"


class FakeStream(io.StringIO):
    """A text stream that says whether it is a terminal."""

    def __init__(self, *, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class BrokenStream(FakeStream):
    def write(self, text: str) -> int:
        raise OSError("stderr is gone")


def info(position: int, length: int, wait: float | None = 40.0, reason: str = "") -> vgpu.QueueInfo:
    return vgpu.QueueInfo(position=position, queue_length=length, estimated_wait_s=wait, reason=reason)


@pytest.fixture
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"memory": "20GiB", "compute": 0.5}, "memory=20GiB compute=0.5"),
        ({"memory": "512MiB", "compute": (0.25, 1.0), "count": (2, 4)}, "memory=512MiB compute=0.25..1 count=2..4"),
        ({"gpus": 2, "gpu_model": ["h100-80gb", "a100-40gb"]}, "gpus=2 gpu_model=h100-80gb,a100-40gb"),
        ({"mig": "3g.40gb"}, "mig=3g.40gb"),
        ({"memory": "18GiB", "isolation": "mig"}, "isolation=mig memory=18GiB"),
        ({}, "a slice"),
    ],
)
def test_the_request_reads_as_its_acquire_arguments(kwargs: dict[str, object], text: str) -> None:
    assert describe_request(build_acquire_request(**kwargs)) == text  # type: ignore[arg-type]


def test_off_a_terminal_each_change_is_one_line_and_the_end_one_more(wide_terminal: None) -> None:
    out = FakeStream(tty=False)
    shown = WaitProgress(out, "memory=20GiB compute=0.5")
    shown(info(3, 7))
    shown(info(3, 7))  # no change: no line
    shown(info(2, 7, wait=None, reason="waiting for memory"))
    shown.finish()
    lines = out.getvalue().splitlines()
    assert lines[:2] == [
        f"{WAITING}: position 3 of 7, about 40s",
        f"{WAITING}: position 2 of 7 (waiting for memory)",
    ]
    assert lines[2].startswith("vgpu: granted memory=20GiB compute=0.5 after ")
    assert len(lines) == 3
    assert "\r" not in out.getvalue()
    assert "\x1b" not in out.getvalue()


def test_off_a_terminal_a_refusal_names_its_reason() -> None:
    out = FakeStream(tty=False)
    shown = WaitProgress(out, "gpus=1")
    shown(info(1, 1))
    shown.finish(vgpu.QueueTimeoutError("waited too long"))
    assert out.getvalue().splitlines()[-1].endswith("(QUEUE_TIMEOUT)")
    assert out.getvalue().splitlines()[-1].startswith("vgpu: stopped waiting for gpus=1 after ")


def test_on_a_terminal_one_line_is_rewritten_in_place_then_cleared(wide_terminal: None) -> None:
    out = FakeStream(tty=True)
    shown = WaitProgress(out, "memory=20GiB compute=0.5")
    shown(info(3, 7))
    shown(info(2, 7, wait=20.0))
    shown.finish()
    assert out.getvalue() == (
        f"{CLEAR_LINE}{WAITING}: position 3 of 7, about 40s"
        f"{CLEAR_LINE}{WAITING}: position 2 of 7, about 20s"
        f"{CLEAR_LINE}"
    )
    shown.finish()  # a second finish writes nothing more
    assert out.getvalue().endswith(f"s{CLEAR_LINE}")


def test_the_live_line_is_cut_to_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    out = FakeStream(tty=True)
    WaitProgress(out, "memory=20GiB compute=0.5")(info(3, 7))
    line = out.getvalue().removeprefix(CLEAR_LINE)
    assert len(line) < 30
    assert line.endswith("…")


def test_no_wait_no_output() -> None:
    for tty in (True, False):
        out = FakeStream(tty=tty)
        WaitProgress(out, "gpus=1").finish()
        assert out.getvalue() == ""


def test_a_broken_stream_does_not_break_the_wait() -> None:
    shown = WaitProgress(BrokenStream(tty=False), "gpus=1")
    shown(info(1, 2))
    shown.finish()


def test_wrap_shows_then_calls_the_callers_own_and_returns_its_result() -> None:
    out = FakeStream(tty=False)
    seen: list[int] = []

    def mine(q: vgpu.QueueInfo) -> str:
        seen.append(q.position)
        return "result"

    callback = WaitProgress(out, "gpus=1").wrap(mine)
    assert callback(info(4, 4)) == "result"
    assert seen == [4]
    assert "position 4 of 4" in out.getvalue()


@pytest.mark.parametrize(
    ("progress", "tty", "has_callback", "shown"),
    [
        (None, True, False, True),  # the default: a terminal and nobody else shows it
        (None, True, True, False),  # the caller shows the wait itself (vgpu run)
        (None, False, False, False),  # a log file: quiet unless asked
        (True, False, True, True),
        (True, True, False, True),
        (False, True, False, False),
    ],
)
def test_when_the_wait_is_shown(progress: bool | None, tty: bool, has_callback: bool, shown: bool) -> None:
    def mine(_: vgpu.QueueInfo) -> None:
        return None

    got = start_progress(
        progress, mine if has_callback else None, build_acquire_request(gpus=1), stream=FakeStream(tty=tty)
    )
    assert (got is not None) == shown


def test_a_fail_fast_acquire_shows_nothing() -> None:
    assert start_progress(True, None, build_acquire_request(gpus=1, wait=False), stream=FakeStream(tty=True)) is None


def test_progress_must_be_a_bool_or_none() -> None:
    with pytest.raises(vgpu.InvalidRequestError, match="progress must be True, False or None"):
        start_progress("yes", None, build_acquire_request(gpus=1))  # type: ignore[arg-type]


def test_the_default_stream_is_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeStream(tty=True)
    monkeypatch.setattr(sys, "stderr", terminal)
    shown = start_progress(None, None, build_acquire_request(gpus=1))
    assert shown is not None
    shown(info(1, 1))
    assert "position 1 of 1" in terminal.getvalue()


# -- wired into acquire, against a scripted daemon --------------------------------------------------------
@pytest.fixture
def daemon() -> Iterator[tuple[FakeWorkload, str]]:
    with fake_daemon() as (servicer, endpoint, _):
        yield servicer, endpoint


@pytest.fixture
def terminal(wide_terminal: None) -> FakeStream:
    """A stand-in terminal; tests put it in sys.stderr themselves (pytest's capture resets it after setup)."""
    return FakeStream(tty=True)


def test_acquire_on_a_terminal_shows_the_wait_and_clears_it(
    daemon: tuple[FakeWorkload, str], terminal: FakeStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", terminal)
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[queued(2, 3), queued(1, 3), granted()]]
    with vgpu.acquire(memory="20GiB", compute=0.5, endpoint=endpoint):
        pass
    assert terminal.getvalue() == (
        f"{CLEAR_LINE}{WAITING}: position 2 of 3, about 7s (waiting for memory)"
        f"{CLEAR_LINE}{WAITING}: position 1 of 3, about 7s (waiting for memory)"
        f"{CLEAR_LINE}"
    )


def test_acquire_with_its_own_on_queued_or_progress_false_stays_quiet(
    daemon: tuple[FakeWorkload, str], terminal: FakeStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", terminal)
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[queued(1, 1), granted()], [queued(1, 1), granted()]]
    seen: list[vgpu.QueueInfo] = []
    with vgpu.Pool(endpoint) as pool:
        pool.acquire(gpus=1, on_queued=seen.append).release()
        pool.acquire(gpus=1, progress=False).release()
    assert len(seen) == 1
    assert terminal.getvalue() == ""


def test_acquire_with_progress_true_off_a_terminal_writes_lines_and_still_calls_on_queued(
    daemon: tuple[FakeWorkload, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, endpoint = daemon
    log = FakeStream(tty=False)
    monkeypatch.setattr(sys, "stderr", log)
    servicer.acquire_scripts = [[queued(1, 2), granted()]]
    seen: list[vgpu.QueueInfo] = []
    with vgpu.Pool(endpoint) as pool:
        pool.acquire(memory="20GiB", compute=0.5, progress=True, on_queued=seen.append).release()
    lines = log.getvalue().splitlines()
    assert lines[0] == f"{WAITING}: position 1 of 2, about 7s (waiting for memory)"
    assert lines[1].startswith("vgpu: granted memory=20GiB compute=0.5 after ")
    assert [q.position for q in seen] == [1]


def test_a_refused_wait_clears_the_line_and_raises(
    daemon: tuple[FakeWorkload, str], terminal: FakeStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", terminal)
    servicer, endpoint = daemon
    servicer.acquire_scripts = [
        [queued(1, 1), Fail(grpc.StatusCode.DEADLINE_EXCEEDED, reasons.QUEUE_TIMEOUT, "waited too long")]
    ]
    with vgpu.Pool(endpoint) as pool, pytest.raises(vgpu.QueueTimeoutError):
        pool.acquire(gpus=1, timeout=30)
    assert terminal.getvalue().endswith(f"position 1 of 1, about 7s (waiting for memory){CLEAR_LINE}")


async def test_async_acquire_shows_the_wait_too(
    daemon: tuple[FakeWorkload, str], terminal: FakeStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", terminal)
    servicer, endpoint = daemon
    servicer.acquire_scripts = [[queued(1, 1), granted()], [queued(1, 1), granted()]]
    async with vgpu.AsyncPool(endpoint) as pool:
        lease = await pool.acquire(gpus=1)
        await lease.release()
        assert (
            terminal.getvalue()
            == f"{CLEAR_LINE}vgpu: waiting for gpus=1: position 1 of 1, about 7s (waiting for memory){CLEAR_LINE}"
        )
        seen: list[int] = []

        async def mine(q: vgpu.QueueInfo) -> None:
            seen.append(q.position)

        lease = await pool.acquire(gpus=1, on_queued=mine, progress=True)
        await lease.release()
    assert seen == [1], "a coroutine on_queued is still awaited behind the progress line"
    assert terminal.getvalue().count("position 1 of 1") == 2

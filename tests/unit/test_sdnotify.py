"""sd_notify over a real SOCK_DGRAM Unix socket, and watchdog interval parsing."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vgpud._private import sdnotify


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_reaches_the_socket(receiver: socket.socket) -> None:
    assert sdnotify.ready()
    assert receiver.recv(4096) == b"READY=1"


def test_every_helper_sends_its_message(receiver: socket.socket) -> None:
    assert sdnotify.stopping()
    assert sdnotify.watchdog_ping()
    assert sdnotify.status("serving 2 GPU(s)\nsecond line")
    assert sdnotify.notify("EXTEND_TIMEOUT_USEC=1000000")
    got = [receiver.recv(4096) for _ in range(4)]
    assert got == [
        b"STOPPING=1",
        b"WATCHDOG=1",
        b"STATUS=serving 2 GPU(s) second line",
        b"EXTEND_TIMEOUT_USEC=1000000",
    ]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"vgpud-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert sock.recv(4096) == b"READY=1"


def test_unset_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready()
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert not sdnotify.watchdog_ping()


def test_missing_or_closed_socket_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: socket.socket
) -> None:
    receiver.close()  # nobody listens any more
    assert not sdnotify.ready()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "never-existed.sock"))
    assert not sdnotify.ready()
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not sdnotify.ready()


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None


@pytest.mark.parametrize("value", ["", "abc", "0", "-5", "1.5"])
def test_bad_watchdog_usec(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", value)
    assert sdnotify.watchdog_interval() is None

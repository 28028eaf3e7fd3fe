"""The etcd launchers' promise, checked: the etcd a process started dies when that process is SIGKILLed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import kill_if_alive, open_pidfd, wait_pidfd
from vgpud._private.store.embedded_etcd import find_etcd_binary

_REPO = Path(__file__).parents[1]


def assert_etcd_dies_with_killed_parent(script: str, *args: str) -> None:
    """Run `script` (it starts etcd, prints etcd's pid, then reads stdin), SIGKILL it, and assert etcd exits.

    The pid must be etcd's itself, not a launcher's: the death signal has to survive the launcher's exec.
    """
    parent = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_REPO
    )
    assert parent.stdout is not None
    assert parent.stdin is not None
    try:
        etcd_pid = int(parent.stdout.readline())
        pidfd = open_pidfd(etcd_pid)
        assert Path(f"/proc/{etcd_pid}/exe").resolve() == find_etcd_binary().resolve()  # etcd, not a launcher
    finally:
        parent.kill()
        parent.wait()
        parent.stdin.close()
        parent.stdout.close()
    try:
        assert wait_pidfd(pidfd, timeout=10), f"etcd (pid {etcd_pid}) outlived its SIGKILLed parent"
    finally:
        kill_if_alive(pidfd)
        os.close(pidfd)

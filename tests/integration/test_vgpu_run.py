"""`vgpu run -- CMD`: the command runs on a lease, its exit status comes back, and the lease ends with it."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import vgpu
from tests.integration.conftest import vgpuctl, wait_until
from vgpu.testing import LocalPool

RUN = [sys.executable, "-m", "vgpu", "run"]


def vgpu_run(daemon: LocalPool, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VGPU_ENDPOINT": daemon.endpoint}
    return subprocess.run([*RUN, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def live_leases(daemon: LocalPool) -> list[vgpu.LeaseInfo]:
    with daemon.pool() as pool:
        return pool.leases()


def test_the_command_runs_on_the_lease_and_its_exit_status_comes_back(daemon: LocalPool, tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    code = (
        "import json, os, sys; "
        "seen = {k: v for k, v in os.environ.items() if k.startswith(('VGPU_', 'CUDA_'))}; "
        f"json.dump(seen, open({str(out)!r}, 'w')); "
        "sys.exit(3)"
    )
    done = vgpu_run(daemon, "--memory", "10GiB", "--compute", "0.25", "--", sys.executable, "-c", code)
    assert done.returncode == 3, done.stderr
    env = json.loads(out.read_text())
    assert env["VGPU_LEASE_ID"].startswith("lease-")
    assert "CUDA_VISIBLE_DEVICES" in env
    assert f"vgpu: lease {env['VGPU_LEASE_ID']}" in done.stderr
    assert live_leases(daemon) == []  # released when the command ended


def test_without_gpu_options_it_says_what_it_would_do_and_refuses(daemon: LocalPool) -> None:
    done = vgpu_run(daemon, "--", "true")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "no GPU asked for" in done.stderr
    assert "--memory" in done.stderr
    assert vgpu_run(daemon, "--memory", "1GiB").returncode == 2  # no command


def test_a_missing_command_is_127_and_takes_no_lease(daemon: LocalPool) -> None:
    done = vgpu_run(daemon, "--memory", "1GiB", "--", "no-such-command-vgpu")
    assert done.returncode == 127
    assert "no-such-command-vgpu: command not found" in done.stderr
    assert live_leases(daemon) == []


def test_a_refused_acquire_exits_69_with_the_reason(daemon: LocalPool) -> None:
    done = vgpu_run(daemon, "--memory", "1GiB", "--project", "nope", "--", "true")
    assert done.returncode == 69
    assert "UNKNOWN_PROJECT" in done.stderr


def test_an_evicted_lease_stops_the_command_and_exits_75(daemon: LocalPool) -> None:
    env = {**os.environ, "VGPU_ENDPOINT": daemon.endpoint}
    proc = subprocess.Popen(
        [*RUN, "--memory", "1GiB", "--", sys.executable, "-c", "import time; time.sleep(120)"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    with proc:
        try:
            lease = wait_until(lambda: next(iter(live_leases(daemon)), None), what="the job's lease")
            assert vgpuctl(daemon, "evict", lease.id).returncode == 0
            assert proc.wait(timeout=30) == 75
            assert proc.stderr is not None
            assert "the lease was lost" in proc.stderr.read()
        finally:
            proc.kill()


def test_ctrl_c_is_forwarded_to_the_command(daemon: LocalPool, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(42))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "VGPU_ENDPOINT": daemon.endpoint}
    proc = subprocess.Popen([*RUN, "--quiet", "--memory", "1GiB", "--", sys.executable, "-c", script], env=env)
    try:
        wait_until(lambda: ready.exists() or None, what="the command to start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 42
        assert live_leases(daemon) == []
    finally:
        proc.kill()


def test_the_command_keeps_the_terminal(daemon: LocalPool) -> None:
    main_fd, sub_fd = pty.openpty()
    env = {**os.environ, "VGPU_ENDPOINT": daemon.endpoint}
    code = "import sys; print('tty' if sys.stdin.isatty() and sys.stdout.isatty() else 'no tty')"
    with subprocess.Popen(
        [*RUN, "--quiet", "--memory", "1GiB", "--", sys.executable, "-c", code],
        env=env,
        stdin=sub_fd,
        stdout=sub_fd,
        stderr=sub_fd,
    ) as proc:
        os.close(sub_fd)
        assert proc.wait(timeout=60) == 0
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # EIO: the other side of the pty is closed and drained
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert b"tty" in seen
    assert b"no tty" not in seen

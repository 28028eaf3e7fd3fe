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
from tests.support import kill_if_alive, open_pidfd, wait_pidfd
from vgpu._private.run_command import build_parser
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


def start_vgpu_run(daemon: LocalPool, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "VGPU_ENDPOINT": daemon.endpoint}
    return subprocess.Popen([*RUN, *args], env=env, stderr=subprocess.PIPE, text=True)


def the_lease(daemon: LocalPool) -> vgpu.LeaseInfo:
    return wait_until(lambda: next(iter(live_leases(daemon)), None), what="the job's lease")


def lease_state(daemon: LocalPool, lease_id: str) -> str | None:
    return next((lease.state for lease in live_leases(daemon) if lease.id == lease_id), None)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    """The exit status and stderr of a `vgpu run` started with start_vgpu_run."""
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def checkpointing_job(workdir: Path, *, ignore_sigterm: bool = False) -> str:
    """A job that resumes from its own checkpoint file: run 0 saves on SIGTERM (or never, and is killed)."""
    on_term = "signal.SIG_IGN" if ignore_sigterm else "save"
    return (
        "import os, pathlib, signal, sys, time\n"
        f"work = pathlib.Path({str(workdir)!r})\n"
        "restart = int(os.environ['VGPU_RESTART_COUNT'])\n"
        "with open(work / 'starts', 'a') as log:\n"
        "    log.write(f\"{restart} {os.environ['CUDA_VISIBLE_DEVICES']}\\n\")\n"
        "def save(*_):\n"
        "    (work / 'checkpoint').write_text('41')\n"
        "    sys.exit(0)\n"
        "if restart == 0:\n"
        f"    signal.signal(signal.SIGTERM, {on_term})\n"
        "    (work / 'ready').touch()\n"
        "    time.sleep(120)\n"
        "    sys.exit(1)\n"
        "saved = work / 'checkpoint'\n"
        "(work / 'resumed-from').write_text(saved.read_text() if saved.exists() else 'nothing')\n"
        "sys.exit(5)\n"
    )


def test_a_preempted_command_is_restarted_on_the_resumed_lease(daemon: LocalPool, tmp_path: Path) -> None:
    proc = start_vgpu_run(daemon, "--memory", "1GiB", "--", sys.executable, "-c", checkpointing_job(tmp_path))
    try:
        wait_until((tmp_path / "ready").exists, what="the command to start")
        lease = the_lease(daemon)
        assert vgpuctl(daemon, "preempt", lease.id, "--grace", "30s").returncode == 0
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 5, err  # the last run's status
    starts = (tmp_path / "starts").read_text().splitlines()
    assert [line.split()[0] for line in starts] == ["0", "1"]
    assert (tmp_path / "resumed-from").read_text() == "41"
    assert "vgpu: preempted (" in err
    assert " to exit" in err
    assert "restarting" in err
    assert "(restart 1)" in err
    assert live_leases(daemon) == []  # released when the last run ended


def test_a_command_that_ignores_the_preempt_signal_is_killed_before_the_deadline(
    daemon: LocalPool, tmp_path: Path
) -> None:
    job = checkpointing_job(tmp_path, ignore_sigterm=True)
    proc = start_vgpu_run(daemon, "--quiet", "--memory", "1GiB", "--", sys.executable, "-c", job)
    try:
        wait_until((tmp_path / "ready").exists, what="the command to start")
        lease = the_lease(daemon)
        assert vgpuctl(daemon, "preempt", lease.id, "--grace", "3s").returncode == 0
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 5, err  # killed in time to acknowledge, so the lease resumed rather than being revoked
    assert (tmp_path / "resumed-from").read_text() == "nothing"
    assert err == ""  # --quiet


def test_on_preempt_signal_only_signals_and_the_command_acknowledges_itself(daemon: LocalPool, tmp_path: Path) -> None:
    ready, starts, out = tmp_path / "ready", tmp_path / "starts", tmp_path / "out.json"
    script = (
        "import json, os, pathlib, signal, sys\n"
        "import vgpu\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
        f"with open({str(starts)!r}, 'a') as log:\n"
        "    log.write(os.environ['VGPU_RESTART_COUNT'] + '\\n')\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "signal.sigwait({signal.SIGUSR1})\n"
        "with vgpu.attach() as lease:\n"
        "    resumed = lease.checkpoint()\n"
        "    seen = {'resumed': resumed, 'status': lease.status, 'preemptions': lease.preemptions}\n"
        f"pathlib.Path({str(out)!r}).write_text(json.dumps(seen))\n"
        "sys.exit(7)\n"
    )
    proc = start_vgpu_run(
        daemon,
        *("--on-preempt", "signal", "--preempt-signal", "SIGUSR1", "--memory", "1GiB"),
        *("--", sys.executable, "-c", script),
    )
    try:
        wait_until(ready.exists, what="the command to start")
        lease = the_lease(daemon)
        assert vgpuctl(daemon, "preempt", lease.id, "--grace", "30s").returncode == 0
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 7, err
    assert json.loads(out.read_text()) == {"resumed": True, "status": "granted", "preemptions": 1}
    assert starts.read_text().splitlines() == ["0"]  # not restarted
    assert "sent SIGUSR1" in err
    assert "restarting" not in err
    assert live_leases(daemon) == []


def test_bad_preemption_options_are_one_line_and_exit_2(daemon: LocalPool) -> None:
    for bad in (
        ("--preempt-signal", "SIGNOPE"),
        ("--preempt-signal", "0"),
        ("--on-preempt", "retry"),
        ("--ttl", "0"),
    ):
        done = vgpu_run(daemon, *bad, "--memory", "1GiB", "--", "true")
        assert done.returncode == 2, bad
        assert done.stderr.count("\n") == 1, done.stderr
        assert bad[0] in done.stderr
    assert live_leases(daemon) == []
    parser = build_parser()
    for name in ("SIGUSR1", "USR1", "usr1", str(int(signal.SIGUSR1))):
        assert parser.parse_args(["--preempt-signal", name]).preempt_signal == signal.SIGUSR1
    assert parser.parse_args([]).preempt_signal == signal.SIGTERM
    assert parser.parse_args([]).on_preempt == "requeue"


def test_losing_the_lease_while_waiting_to_resume_exits_75(daemon: LocalPool, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(120)"
    proc = start_vgpu_run(daemon, "--memory", "1GiB", "--", sys.executable, "-c", script)
    try:
        wait_until(ready.exists, what="the command to start")
        lease = the_lease(daemon)
        assert vgpuctl(daemon, "drain", daemon.node_name).returncode == 0  # nowhere to resume
        assert vgpuctl(daemon, "preempt", lease.id, "--grace", "30s").returncode == 0
        wait_until(lambda: lease_state(daemon, lease.id) == "suspended", what="the lease to be suspended")
        assert vgpuctl(daemon, "evict", lease.id).returncode == 0
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 75, err
    assert "the lease was lost while" in err
    assert "waited to resume" in err
    assert "restarting" not in err


def test_a_killed_vgpu_run_takes_its_command_along_and_the_lease_expires(daemon: LocalPool, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(120)"
    proc = start_vgpu_run(daemon, "--quiet", "--ttl", "2", "--memory", "1GiB", "--", sys.executable, "-c", script)
    try:
        pid = int(wait_until(lambda: pid_file.read_text() if pid_file.exists() else None, what="the command to start"))
        pidfd = open_pidfd(pid)
        the_lease(daemon)
    finally:
        proc.kill()
        proc.wait()  # not communicate(): a surviving command would hold the stderr pipe open
        assert proc.stderr is not None
        proc.stderr.close()
    try:
        assert wait_pidfd(pidfd, timeout=10), "the command outlived its SIGKILLed vgpu run"
    finally:
        kill_if_alive(pidfd)
        os.close(pidfd)
    wait_until(lambda: not live_leases(daemon), timeout=30, what="the lease to expire")

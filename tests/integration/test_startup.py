"""vgpud as an operator meets it: refusals at start-up, sd_notify, metrics, clean stop, no orphaned etcd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import wait_until
from tests.support import free_port
from vgpu.testing import LocalPool, local_pool


def vgpud(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vgpud", "--sim", "h100-80gb:1", "--node-name", "t", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=tmp,
    )


def test_bad_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "vgpud.toml"
    config.write_text('node_name = "n"\nno_such_key = 1\n')
    result = vgpud(tmp_path, "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "no_such_key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_flag_value_exits_2(tmp_path: Path) -> None:
    result = vgpud(tmp_path, "--lease-ttl", "0", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "ttl" in result.stderr


def test_unwritable_state_dir_exits_3(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    result = vgpud(tmp_path, "--state-dir", str(blocker / "state"), "--socket", str(tmp_path / "s.sock"))
    assert result.returncode == 3
    assert "state dir" in result.stderr
    assert "--state-dir" in result.stderr
    assert result.stderr.count("state dir") == 1  # one line, on a TTY or off it


def test_unreachable_etcd_exits_3_after_a_bounded_retry(tmp_path: Path) -> None:
    config = tmp_path / "vgpud.toml"
    config.write_text("[etcd]\nconnect_timeout_s = 2.0\n")
    started = time.monotonic()
    result = vgpud(
        tmp_path,
        "--config",
        str(config),
        "--etcd",
        f"127.0.0.1:{free_port()}",
        "--state-dir",
        str(tmp_path / "s"),
        "--socket",
        str(tmp_path / "s.sock"),
    )
    assert result.returncode == 3
    assert "etcd" in result.stderr
    assert time.monotonic() - started < 30


def test_socket_in_use_exits_3(daemon: LocalPool, tmp_path: Path) -> None:
    result = vgpud(tmp_path, "--state-dir", str(tmp_path / "s"), "--socket", str(daemon.socket_path))
    assert result.returncode == 3
    assert "already listening" in result.stderr


def test_metrics_port_in_use_exits_3(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = vgpud(
            tmp_path,
            "--state-dir",
            str(tmp_path / "s"),
            "--socket",
            str(tmp_path / "s.sock"),
            "--metrics-port",
            str(port),
        )
    assert result.returncode == 3
    # Printed once (no log event repeating it off a TTY), and before anything that talks to etcd started.
    assert result.stderr.count(str(port)) == 1
    assert f"vgpud: error: cannot serve metrics on 127.0.0.1:{port}: the port is in use" in result.stderr
    assert "unreachable" not in result.stderr


def test_notify_metrics_and_clean_stop(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    port = free_port()
    state = Path(os.environ.get("TMPDIR", "/tmp")) / f"vgpu-notify-{os.getpid()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vgpud",
            "--sim",
            "h100-80gb:2",
            "--node-name",
            "notified",
            "--state-dir",
            str(state),
            "--socket",
            str(state / "vgpud.sock"),
            "--metrics-port",
            str(port),
        ],
        env={**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        messages: list[str] = []
        while "READY=1" not in messages:
            messages += notify.recv(4096).decode().splitlines()
        while "WATCHDOG=1" not in messages:
            messages += notify.recv(4096).decode().splitlines()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "vgpu_gpu_memory_capacity_bytes{" in body
        assert "vgpu_acquire_latency_seconds" in body
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages += notify.recv(4096).decode().splitlines()
        assert proc.wait(30) == 0
        assert not (state / "vgpud.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        subprocess.run(["rm", "-rf", str(state)], check=False)


def test_embedded_etcd_dies_with_a_killed_daemon() -> None:
    with local_pool("h100-80gb:1") as pool:
        ports = json.loads((pool.state_dir / "etcd" / "ports.json").read_text())
        assert pool.pid is not None
        os.kill(pool.pid, signal.SIGKILL)  # only the daemon, not its process group

        def etcd_gone() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", ports["client"])) != 0

        wait_until(etcd_gone, timeout=20, what="the embedded etcd to exit with its daemon")


@pytest.mark.parametrize("spec", ["h100-80gb:0", "z100:1", "h100-80gb:x"])
def test_bad_sim_spec_exits_2(tmp_path: Path, spec: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vgpud", "--sim", spec, "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "sim" in result.stderr.lower()

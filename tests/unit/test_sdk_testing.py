"""vgpu.testing: the harness against a stand-in daemon script, and against the real vgpud."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import vgpu
from tests.unit.test_sdk_support import short_tmp_dir
from vgpu.testing import LocalPool, local_pool

# A stand-in for `python -m vgpud`: takes the same flags, serves the standard health check on the socket,
# and records what it was started with. --sim "exit" exits at once with a message; "mute" never serves.
STAND_IN = textwrap.dedent(
    """
    import argparse, json, signal, sys, threading
    from concurrent import futures
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    parser = argparse.ArgumentParser()
    for flag in ("--sim", "--state-dir", "--socket", "--node-name", "--log-format", "--lease-ttl"):
        parser.add_argument(flag)
    parser.add_argument("--cluster")
    args = parser.parse_args()
    with open(f"{args.state_dir}/argv.json", "a") as out:
        out.write(json.dumps(sys.argv[1:]) + "\\n")
    print("stand-in vgpud starting", flush=True)
    if args.sim == "exit":
        print("vgpud: unknown GPU model 'nope' in --sim", file=sys.stderr, flush=True)
        sys.exit(2)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.sim != "mute":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(f"unix://{args.socket}")
        server.start()
    stop.wait()
    print("stand-in vgpud stopping", flush=True)
    """
)


@pytest.fixture
def stand_in() -> Iterator[list[str]]:
    with short_tmp_dir() as tmp:
        script = tmp / "stand_in_vgpud.py"
        script.write_text(STAND_IN)
        yield [sys.executable, str(script)]


def recorded_argv(pool: LocalPool) -> list[list[str]]:
    lines = (pool.state_dir / "argv.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_starts_waits_for_serving_and_stops(stand_in: list[str]) -> None:
    pool = LocalPool("h100-80gb:1", ttl=5, extra_args=["--cluster", "c1"], command_prefix=stand_in)
    state_dir = pool.state_dir
    with pool:
        running_pid = pool.pid
        assert running_pid is not None
        assert pool.endpoint == f"unix://{state_dir / 'vgpud.sock'}"
        assert pool.env() == {"VGPU_ENDPOINT": pool.endpoint}
        assert str(state_dir).startswith("/tmp/vgpu-")
        (argv,) = recorded_argv(pool)
        assert argv == [
            "--sim",
            "h100-80gb:1",
            "--state-dir",
            str(state_dir),
            "--socket",
            str(state_dir / "vgpud.sock"),
            "--node-name",
            pool.node_name,
            "--log-format",
            "json",
            "--lease-ttl",
            "5",
            "--cluster",
            "c1",
        ]
        with pool.pool() as client:
            assert client.endpoint == pool.endpoint
        pool.stop()
        assert pool.pid is None
        assert pool.log_tail().endswith("stand-in vgpud stopping")  # it got SIGTERM, not SIGKILL
    assert not state_dir.exists()


def test_restart_reuses_state_dir_node_name_and_flags(stand_in: list[str]) -> None:
    with LocalPool(command_prefix=stand_in) as pool:
        first_pid = pool.pid
        pool.kill()
        pid_after_kill = pool.pid
        pool.restart()
        assert pid_after_kill is None
        assert pool.pid not in (None, first_pid)
        first, second = recorded_argv(pool)
        assert first == second
        assert pool.log_tail().count("stand-in vgpud starting") == 2


def test_a_daemon_that_exits_at_startup_raises_with_the_log_tail(stand_in: list[str]) -> None:
    pool = LocalPool("exit", command_prefix=stand_in, startup_timeout=30)
    with pytest.raises(vgpu.DaemonUnavailableError) as info:
        pool.start()
    assert "exited with code 2 during startup" in info.value.message
    assert "unknown GPU model 'nope'" in info.value.message
    pool.cleanup()
    assert not pool.state_dir.exists()


def test_a_daemon_that_never_serves_times_out_and_is_killed(stand_in: list[str]) -> None:
    pool = LocalPool("mute", command_prefix=stand_in, startup_timeout=1)
    try:
        with pytest.raises(vgpu.DaemonUnavailableError, match=r"did not report SERVING .* within 1s"):
            pool.start()
        assert pool.pid is None
    finally:
        pool.cleanup()


def test_given_state_dir_is_kept_and_long_socket_paths_are_refused(stand_in: list[str], tmp_path: Path) -> None:
    with short_tmp_dir() as tmp:
        with LocalPool(state_dir=tmp / "state", command_prefix=stand_in) as pool:
            assert pool.state_dir == tmp / "state"
        assert (tmp / "state" / "vgpud.log").exists()
    with pytest.raises(vgpu.InvalidRequestError, match="use a shorter state_dir"):
        LocalPool(state_dir=tmp_path / ("d" * 120))


# -- the real daemon -----------------------------------------------------------------------------
needs_vgpud_cli = pytest.mark.skipif(
    importlib.util.find_spec("vgpud.__main__") is None, reason="the vgpud command line is not built yet"
)


@pytest.fixture(scope="module")
def real_daemon() -> None:
    """Skip while the daemon's wiring cannot even be imported (it is being built alongside the SDK)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import vgpud._private.daemon"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"vgpud cannot start yet: {probe.stderr.strip().splitlines()[-1:]}")


@needs_vgpud_cli
@pytest.mark.timeout(120)
def test_real_daemon_with_a_bad_sim_spec_fails_with_the_log_tail() -> None:
    with pytest.raises(vgpu.DaemonUnavailableError) as info, local_pool("no-such-gpu:2"):
        pass
    message = info.value.message
    assert "exited with code 2 during startup" in message  # 2: bad flags or config
    assert "vgpud: error:" in message.split("log tail", 1)[1]


@needs_vgpud_cli
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("real_daemon")
def test_real_daemon_grants_and_releases_a_slice() -> None:
    with local_pool("h100-80gb:1") as daemon, daemon.pool() as pool:
        with pool.acquire(memory="20GiB", compute=0.5) as lease:
            assert lease.status == "granted"
            assert lease.env["VGPU_LEASE"] == lease.token
            assert lease.slices[0].gpu_model == "h100-80gb"
            assert [info.id for info in pool.leases()] == [lease.id]
        assert lease.released
        assert pool.leases() == []

"""MpsDaemons against a fake nvidia-cuda-mps-control, mps_environment and validate_mps."""

from __future__ import annotations

import math
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from vgpud._private.config_mps import MpsConfig, validate_mps
from vgpud._private.core.environment import mps_environment
from vgpud._private.mps_control import MpsDaemons, MpsError

GPUS = ["GPU-aaaa-1111", "GPU-bbbb-2222"]
MiB = 1024 * 1024


def alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie counts as gone (PID 1 here may not reap orphans)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def daemon_pids(log_root: Path, uuid: str) -> list[int]:
    """The pids of the fake daemons started for `uuid`, from their control.log lines."""
    log = log_root / uuid / "control.log"
    if not log.exists():
        return []
    return [int(line.split()[0].removeprefix("pid=")) for line in log.read_text().splitlines()]


def seen_devices(log_root: Path, uuid: str) -> list[str]:
    log = log_root / uuid / "control.log"
    return [line.split()[1].removeprefix("CUDA_VISIBLE_DEVICES=") for line in log.read_text().splitlines()]


@pytest.fixture
def config(tmp_path: Path, mps_binary: Path) -> Iterator[MpsConfig]:
    """A config whose roots lie in tmp_path; every fake daemon still running afterwards is stopped."""
    cfg = MpsConfig(
        enabled=True,
        control_binary=str(mps_binary),
        pipe_root=str(tmp_path / "run" / "mps"),
        log_root=str(tmp_path / "log" / "mps"),
        start_timeout_s=10.0,
    )
    try:
        yield cfg
    finally:
        leaked = [
            pid
            for log in Path(cfg.log_root).glob("*/control.log")
            for pid in daemon_pids(log.parents[1], log.parent.name)
        ]
        for pid in leaked:
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        assert all(wait_gone(pid) for pid in leaked)


def test_starts_one_daemon_per_gpu_and_stops_them(config: MpsConfig) -> None:
    mps = MpsDaemons(config)
    pipes = mps.start(GPUS)
    log_root = Path(config.log_root)
    assert pipes == {uuid: str(Path(config.pipe_root) / uuid) for uuid in GPUS}
    assert mps.pipes == pipes
    pids = {}
    for uuid in GPUS:
        assert (Path(pipes[uuid]) / "control").exists()
        assert seen_devices(log_root, uuid) == [uuid]
        [pids[uuid]] = daemon_pids(log_root, uuid)
        assert alive(pids[uuid])
        for path in (Path(config.pipe_root), Path(pipes[uuid]), log_root / uuid):
            assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert pids[GPUS[0]] != pids[GPUS[1]]

    mps.stop()
    assert mps.pipes == {}
    for uuid in GPUS:
        assert not (Path(pipes[uuid]) / "control").exists()
        assert wait_gone(pids[uuid])


def test_a_running_daemon_is_reused(config: MpsConfig) -> None:
    first = MpsDaemons(config).start(GPUS)
    [pid] = daemon_pids(Path(config.log_root), GPUS[0])

    again = MpsDaemons(config)  # as after a vgpud restart
    assert again.start(GPUS) == first
    assert again.start(GPUS[:1]) == {GPUS[0]: first[GPUS[0]]}  # and on the same manager
    for uuid in GPUS:
        assert len(daemon_pids(Path(config.log_root), uuid)) == 1
    assert alive(pid)

    again.stop()
    assert wait_gone(pid)
    assert not any((Path(p) / "control").exists() for p in first.values())


def test_a_stale_control_pipe_is_replaced(config: MpsConfig) -> None:
    pipe_dir = Path(config.pipe_root) / GPUS[0]
    pipe_dir.mkdir(parents=True)
    (pipe_dir / "control").write_text("")  # left by a daemon that died
    mps = MpsDaemons(config)
    try:
        assert mps.start(GPUS[:1]) == {GPUS[0]: str(pipe_dir)}
        [pid] = daemon_pids(Path(config.log_root), GPUS[0])
        assert alive(pid)
    finally:
        mps.stop()
    assert wait_gone(pid)


@pytest.mark.parametrize("name", ["no-such-mps-control-binary", "/nonexistent/nvidia-cuda-mps-control"])
def test_a_missing_binary_is_a_clear_error(config: MpsConfig, name: str) -> None:
    mps = MpsDaemons(MpsConfig(enabled=True, control_binary=name, pipe_root=config.pipe_root, log_root=config.log_root))
    with pytest.raises(MpsError) as err:
        mps.start(GPUS)
    message = str(err.value)
    assert GPUS[0] in message
    assert name in message
    assert "[mps] enabled = false" in message
    assert "nvidia-cuda-mps-control" in message
    assert mps.pipes == {}


def test_a_binary_that_exits_non_zero(config: MpsConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MPS_FAIL", "1")
    mps = MpsDaemons(config)
    with pytest.raises(MpsError, match="exited with 1") as err:
        mps.start(GPUS)
    assert GPUS[0] in str(err.value)
    assert "fake MPS: cannot start a control daemon" in str(err.value)  # its stderr
    assert mps.pipes == {}
    assert daemon_pids(Path(config.log_root), GPUS[0]) == []


def test_a_control_pipe_that_never_appears(config: MpsConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MPS_NO_CONTROL", "1")
    cfg = MpsConfig(
        enabled=True,
        control_binary=config.control_binary,
        pipe_root=config.pipe_root,
        log_root=config.log_root,
        start_timeout_s=0.5,
    )
    mps = MpsDaemons(cfg)
    with pytest.raises(MpsError, match=r"did not appear within 0\.5 s") as err:
        mps.start(GPUS)
    assert GPUS[0] in str(err.value)
    assert "start_timeout_s" in str(err.value)
    assert "control.log" in str(err.value)  # the daemon's log tail helps find out why
    assert mps.pipes == {}
    [pid] = daemon_pids(Path(config.log_root), GPUS[0])
    assert wait_gone(pid)  # the manager told it to quit
    assert daemon_pids(Path(config.log_root), GPUS[1]) == []  # never tried


def test_a_partial_failure_stops_the_daemons_started(config: MpsConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MPS_FAIL", GPUS[1])
    mps = MpsDaemons(config)
    with pytest.raises(MpsError, match=GPUS[1]):
        mps.start(GPUS)
    assert mps.pipes == {}
    [pid] = daemon_pids(Path(config.log_root), GPUS[0])
    assert wait_gone(pid)
    assert not (Path(config.pipe_root) / GPUS[0] / "control").exists()


def test_a_partial_failure_keeps_reused_daemons(config: MpsConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    mps = MpsDaemons(config)
    mps.start(GPUS[:1])
    [pid] = daemon_pids(Path(config.log_root), GPUS[0])
    monkeypatch.setenv("FAKE_MPS_FAIL", GPUS[1])
    with pytest.raises(MpsError, match=GPUS[1]):
        mps.start(GPUS)
    assert alive(pid)  # not started by the failed call: still running and known
    assert list(mps.pipes) == GPUS[:1]
    mps.stop()
    assert wait_gone(pid)


def test_an_unusable_directory_is_an_error(config: MpsConfig) -> None:
    Path(config.log_root).parent.mkdir(parents=True)
    Path(config.log_root).write_text("not a directory")
    with pytest.raises(MpsError, match="log_root") as err:
        MpsDaemons(config).start(GPUS)
    assert GPUS[0] in str(err.value)


def test_a_bad_gpu_uuid_is_refused(config: MpsConfig) -> None:
    with pytest.raises(MpsError, match="not a usable GPU UUID"):
        MpsDaemons(config).start(["../escape"])


def test_a_hanging_start_is_bounded(config: MpsConfig) -> None:
    calls: list[list[str]] = []

    def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        if args[-1] == "-d":
            raise subprocess.TimeoutExpired(args, kwargs["timeout"])
        return subprocess.CompletedProcess(args, 1, "", "no daemon")

    with pytest.raises(MpsError, match="did not return within 10 s"):
        MpsDaemons(config, run=run).start(GPUS)
    assert calls == [[config.control_binary, "-d"], [config.control_binary]]  # then a quit, in case


def test_stop_logs_failures_instead_of_raising(config: MpsConfig, mps_binary: Path) -> None:
    mps = MpsDaemons(config)
    mps.start(GPUS)
    mps_binary.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    mps.stop()  # does not raise; the config fixture stops the daemons
    assert mps.pipes == {}


def test_mps_environment() -> None:
    env = mps_environment("/run/vgpu/mps/GPU-x", 250, 4096 * MiB)
    assert env == {
        "CUDA_MPS_PIPE_DIRECTORY": "/run/vgpu/mps/GPU-x",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=4096M",
    }


@pytest.mark.parametrize(
    ("compute_milli", "percent"),
    [(1000, "100"), (999, "99"), (255, "25"), (10, "1"), (9, "1"), (0, "1"), (2000, "100")],
)
def test_mps_thread_percentage_rounds_down_within_1_to_100(compute_milli: int, percent: str) -> None:
    assert mps_environment("/p", compute_milli, MiB)["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == percent


@pytest.mark.parametrize(
    ("memory_bytes", "limit"),
    [(MiB, "0=1M"), (2 * MiB - 1, "0=1M"), (MiB - 1, "0=1M"), (0, "0=1M"), (80 << 30, "0=81920M")],
)
def test_mps_memory_limit_whole_mib_at_least_1(memory_bytes: int, limit: str) -> None:
    assert mps_environment("/p", 500, memory_bytes)["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == limit


class RefusedError(Exception):
    pass


def fail(key: str, message: str) -> NoReturn:
    raise RefusedError(f"{key}: {message}")


def test_validate_mps_accepts_the_defaults_and_edges() -> None:
    validate_mps(MpsConfig(), fail)
    validate_mps(MpsConfig(start_timeout_s=600.0, pipe_root="/p", log_root="/l"), fail)
    validate_mps(MpsConfig(start_timeout_s=0.01, control_binary="/opt/nvidia/bin/nvidia-cuda-mps-control"), fail)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (MpsConfig(pipe_root="run/vgpu/mps"), "mps.pipe_root"),
        (MpsConfig(log_root="./mps"), "mps.log_root"),
        (MpsConfig(log_root=""), "mps.log_root"),
        (MpsConfig(start_timeout_s=0.0), "mps.start_timeout_s"),
        (MpsConfig(start_timeout_s=-1.0), "mps.start_timeout_s"),
        (MpsConfig(start_timeout_s=600.5), "mps.start_timeout_s"),
        (MpsConfig(start_timeout_s=math.nan), "mps.start_timeout_s"),
        (MpsConfig(control_binary=" "), "mps.control_binary"),
    ],
)
def test_validate_mps_refuses(cfg: MpsConfig, key: str) -> None:
    with pytest.raises(RefusedError, match=f"^{key}: "):
        validate_mps(cfg, fail)

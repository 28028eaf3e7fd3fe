"""MPS mode against a real daemon: one control daemon per GPU (a fake nvidia-cuda-mps-control), MPS variables
in the environment of time-sliced leases, the daemons stopped with vgpud, a missing binary a clear startup error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import Admin, GiB
from vgpu import DaemonUnavailableError
from vgpu.testing import LocalPool


def _config(tmp_path: Path, binary: str) -> Path:
    config = tmp_path / "vgpud.toml"
    config.write_text(
        f"""
[mps]
enabled = true
control_binary = "{binary}"
pipe_root = "{tmp_path / "run" / "mps"}"
log_root = "{tmp_path / "log" / "mps"}"
start_timeout_s = 10
"""
    )
    return config


def test_time_sliced_leases_get_the_mps_variables_of_their_gpu(tmp_path: Path, mps_binary: Path) -> None:
    config = _config(tmp_path, str(mps_binary))
    pipes = tmp_path / "run" / "mps"
    with LocalPool("h100-80gb:2", extra_args=["--config", str(config)]) as pool, pool.pool() as client:
        started = sorted(p.name for p in pipes.iterdir() if (p / "control").exists())
        assert len(started) == 2  # one control daemon per GPU
        shared = client.acquire(memory="20GiB", compute=0.25, wait=False)
        gpu = shared.env["CUDA_VISIBLE_DEVICES"]
        assert shared.env["CUDA_MPS_PIPE_DIRECTORY"] == str(pipes / gpu)
        assert shared.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
        assert shared.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={20 * GiB // 1024**2}M"
        stubs = Admin(pool.endpoint)
        assert stubs.get(shared.id, shared.token).env["CUDA_MPS_PIPE_DIRECTORY"] == str(pipes / gpu)  # later reads
        stubs.close()
        log = (tmp_path / "log" / "mps" / gpu / "control.log").read_text()
        assert f"CUDA_VISIBLE_DEVICES={gpu}" in log  # the daemon of that GPU sees only that GPU
        two = client.acquire(memory="10GiB", compute=0.5, count=2, wait=False)
        assert "CUDA_MPS_PIPE_DIRECTORY" not in two.env  # one process talks to one MPS daemon: not across GPUs
        shared.release()
        two.release()
    assert not [p for p in pipes.iterdir() if (p / "control").exists()]  # stopped with vgpud


def test_without_mps_no_variables_are_handed_out(tmp_path: Path) -> None:
    with LocalPool("h100-80gb:1") as pool, pool.pool() as client:
        lease = client.acquire(memory="20GiB", compute=0.25, wait=False)
        assert not [k for k in lease.env if k.startswith("CUDA_MPS_")]


def test_a_missing_control_binary_fails_startup_saying_what_to_change(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "no-such-binary"))
    with pytest.raises(DaemonUnavailableError) as failed:
        LocalPool("h100-80gb:1", extra_args=["--config", str(config)]).start()
    assert "exited with code 3" in str(failed.value)
    assert "enabled = false" in str(failed.value)

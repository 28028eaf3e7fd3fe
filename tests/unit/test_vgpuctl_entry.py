"""vgpuctl as an operator runs it: a separate process, through the console script and `python -m`."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "vgpuctl"


def vgpuctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "VGPU_ENDPOINT"}
    return subprocess.run(
        [sys.executable, "-m", "vgpuctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_module_help_exits_0_and_documents_exit_codes() -> None:
    result = vgpuctl("--help")
    assert result.returncode == 0, result.stderr
    for verb in ("nodes", "gpus", "leases", "evict", "drain", "gpu", "health"):
        assert verb in result.stdout
    assert "Exit codes" in result.stdout
    assert "cannot reach the daemon" in result.stdout


@pytest.mark.skipif(not SCRIPT.exists(), reason="the package is not installed with its console scripts")
def test_console_script_help_exits_0() -> None:
    result = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "Usage: vgpuctl" in result.stdout


def test_unreachable_daemon_gives_exit_4_and_one_line_without_traceback() -> None:
    with tempfile.TemporaryDirectory(prefix="vgpuctl-") as directory:
        result = vgpuctl("--endpoint", f"{directory}/missing.sock", "gpus")
    assert result.returncode == 4
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"vgpuctl: error: cannot reach vgpud at unix://{directory}/missing.sock")

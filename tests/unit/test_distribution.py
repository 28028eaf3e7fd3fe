"""What the distribution says about itself: versions on every door, and the license it ships."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import vgpu
from vgpuctl._private.app import main

ROOT = Path(__file__).resolve().parents[2]
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
"""sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt, the license text unchanged."""


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "VGPU_ENDPOINT"}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60, check=False, env=env)


def test_sdk_version_is_the_installed_distributions() -> None:
    assert vgpu.__version__ == version("vgpu")
    assert "__version__" in vgpu.__all__


def test_vgpuctl_version_prints_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"vgpuctl {version('vgpu')}\n"
    done = run("-m", "vgpuctl", "--version")  # before any verb and without a daemon
    assert (done.returncode, done.stdout, done.stderr) == (0, f"vgpuctl {version('vgpu')}\n", "")


def test_vgpu_version_prints_and_exits_0() -> None:
    done = run("-m", "vgpu", "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"vgpu {version('vgpu')}\n", "")


def test_license_is_the_apache_2_text_unchanged() -> None:
    text = (ROOT / "LICENSE").read_bytes()
    assert text.split(b"\n")[1:3] == [
        b"                                 Apache License",
        b"                           Version 2.0, January 2004",
    ]
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


def test_built_metadata_ships_the_license(tmp_path: Path) -> None:
    """What a wheel would carry: setuptools' metadata names LICENSE and copies it into dist-info."""
    script = (
        "import sys\nfrom setuptools import build_meta\n"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    dist_info = tmp_path / done.stdout.split()[-1]
    metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert (dist_info / "licenses" / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()

"""The unit an operator installs (`vgpud --print-unit`) loads cleanly and stays hardened.

`systemd-analyze verify` and `systemd-analyze security --offline` read the unit file without a running
systemd, so these run on any host (or container) that has systemd-analyze; elsewhere they skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MAX_EXPOSURE = 4.5
"""The exposure level the unit must not exceed (issue 17); the unit's header says what it is now."""
OFFLINE_SINCE = 250
"""`systemd-analyze security --offline` and `--threshold` came with systemd 250."""
_ANALYZE = shutil.which("systemd-analyze")
_OVERALL = re.compile(r"Overall exposure level for vgpud\.service: (\d+\.\d+)")
_HEADER_CLAIM = re.compile(r"^# `systemd-analyze security vgpud\.service` rates it (\d+\.\d+)", re.MULTILINE)

pytestmark = pytest.mark.skipif(
    _ANALYZE is None, reason="systemd-analyze is not installed (on Debian: apt-get install systemd)"
)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    # C locale: plain "+"/"-" marks instead of glyphs that depend on the terminal; no pager, no colours.
    env = {**os.environ, "LC_ALL": "C", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
    assert _ANALYZE is not None
    return subprocess.run([_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False, env=env)


def systemd_version() -> int:
    first = analyze("--version").stdout.split("\n", 1)[0]  # "systemd 252 (252.38-1~deb12u1)"
    match = re.match(r"systemd (\d+)", first)
    return int(match.group(1)) if match else 0


@pytest.fixture
def printed_unit(tmp_path: Path) -> Path:
    """What `vgpud --print-unit > /etc/systemd/system/vgpud.service` installs, ExecStart naming this venv's vgpud."""
    script = Path(sys.executable).parent / "vgpud"
    if not script.is_file():
        pytest.skip(f"no vgpud console script at {script} (pip install the project first)")
    done = subprocess.run([str(script), "--print-unit"], capture_output=True, text=True, timeout=60, check=True)
    unit = tmp_path / "vgpud.service"
    unit.write_text(done.stdout)
    return unit


@pytest.fixture
def security(printed_unit: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """`systemd-analyze security --offline` of the printed unit, and the overall exposure it reports."""
    if (version := systemd_version()) < OFFLINE_SINCE:
        pytest.skip(f"systemd-analyze {version} cannot assess a unit file offline (needs systemd {OFFLINE_SINCE})")
    done = analyze("security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}", str(printed_unit))
    match = _OVERALL.search(done.stdout)
    assert match, f"no overall exposure in:\n{done.stdout}{done.stderr}"
    return done, float(match.group(1))


def test_verify_accepts_the_printed_unit(printed_unit: Path) -> None:
    done = analyze("verify", str(printed_unit))
    # verify exits 0 on an unknown or misspelt key and only warns, naming the file: such a line is a failure.
    about_unit = [line for line in done.stderr.splitlines() if printed_unit.name in line]
    assert done.returncode == 0, done.stderr
    assert about_unit == [], done.stderr


def test_exposure_is_at_most_the_limit(security: tuple[subprocess.CompletedProcess[str], float]) -> None:
    done, exposure = security
    assert exposure <= MAX_EXPOSURE, done.stdout
    assert done.returncode == 0, f"--threshold refused it:\n{done.stdout}{done.stderr}"


def test_unit_header_states_the_exposure(
    security: tuple[subprocess.CompletedProcess[str], float], printed_unit: Path
) -> None:
    claim = _HEADER_CLAIM.search(printed_unit.read_text())
    assert claim, "the unit's header must say what systemd-analyze security rates it"
    assert float(claim.group(1)) == security[1], "update the exposure in the unit's header (and in README.md)"


def test_every_remaining_exposure_is_explained(
    security: tuple[subprocess.CompletedProcess[str], float], printed_unit: Path
) -> None:
    flagged = [line.split()[1] for line in security[0].stdout.splitlines() if line.startswith("- ")]
    assert flagged, security[0].stdout
    text = printed_unit.read_text()
    unexplained = [name for name in flagged if f"#   {name}: " not in text]
    assert unexplained == [], f"switch these off, or say in the unit why vgpud needs them: {unexplained}"

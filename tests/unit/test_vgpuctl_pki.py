"""`vgpuctl pki` as an operator runs it: a separate process, no daemon, paths out, one-line errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vgpu._private import pki


def vgpuctl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "VGPU_ENDPOINT"}
    return subprocess.run(
        [sys.executable, "-m", "vgpuctl", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def identity(path: Path) -> pki.CertificateIdentity:
    return pki.identity_of(pki.load_certificate(path.read_bytes()))


def test_init_and_issue_print_the_paths_written(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    init = vgpuctl("pki", "init", directory, "--cluster", "prod", "--days", "30")
    assert init.returncode == 0, init.stderr
    assert init.stdout.splitlines() == [str(directory / "ca.pem"), str(directory / "ca-key.pem")]
    assert init.stderr == ""
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    issued = vgpuctl(
        "pki", "issue", directory, "gpu-07", "--role", "node", "--host", "10.0.0.7", "--host", "gpu-07.lan"
    )
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.splitlines() == [str(directory / "gpu-07.pem"), str(directory / "gpu-07-key.pem")]
    assert identity(directory / "gpu-07.pem").spiffe.uri() == "spiffe://prod/node/gpu-07"
    assert stat.S_IMODE((directory / "gpu-07-key.pem").stat().st_mode) == 0o600
    user = vgpuctl("pki", "issue", directory, "alice", "--role", "user", "--groups", "vision, nlp", "--days", "7")
    assert user.returncode == 0, user.stderr
    alice = identity(directory / "alice.pem")
    assert alice.spiffe.uri() == "spiffe://prod/user/alice"
    assert alice.groups == ("vision", "nlp")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["issue", "{dir}", "alice", "--role", "root"], "role 'root' is unknown"),
        (["issue", "{dir}", "al/ice", "--role", "user"], "name 'al/ice' is not allowed"),
        (["issue", "{dir}", "alice", "--role", "user", "--groups", "a,b c"], "group 'b c'"),
        (["issue", "{dir}", "alice", "--role", "user", "--days", "0"], "--days 0 is out of range"),
        (["issue", "{dir}", "alice", "--role", "user", "--host", "no_such host"], "nor a DNS name"),
        (["issue", "{dir}", "alice"], "Missing option '--role'"),
        (["issue", "{dir}/missing", "alice", "--role", "user"], "run `vgpuctl pki init {dir}/missing` first"),
        (["init", "{dir}"], "ca.pem exists already"),
        (["init", "{dir}/new", "--cluster", "a b"], "cluster 'a b'"),
        (["init", "{dir}/new", "--days", "many"], "Invalid value for '--days'"),
    ],
)
def test_bad_input_is_one_usage_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    pki.create_ca(tmp_path)
    before = sorted(tmp_path.iterdir())
    result = vgpuctl("pki", *(arg.format(dir=tmp_path) for arg in args))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vgpuctl: error: ")
    assert says.format(dir=tmp_path) in lines[0]
    assert sorted(tmp_path.iterdir()) == before


def test_issue_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    pki.create_ca(tmp_path)
    assert vgpuctl("pki", "issue", tmp_path, "bob", "--role", "user").returncode == 0
    again = vgpuctl("pki", "issue", tmp_path, "bob", "--role", "admin")
    assert again.returncode == 2
    assert "bob.pem exists already" in again.stderr
    assert "--force" in again.stderr
    assert identity(tmp_path / "bob.pem").spiffe.role == "user"
    forced = vgpuctl("pki", "issue", tmp_path, "bob", "--role", "admin", "--force")
    assert forced.returncode == 0, forced.stderr
    assert identity(tmp_path / "bob.pem").spiffe.role == "admin"


def test_pki_alone_prints_help_and_exits_2() -> None:
    result = vgpuctl("pki")
    assert result.returncode == 2
    assert "init" in result.stdout
    assert "issue" in result.stdout

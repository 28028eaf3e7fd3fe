"""vgpud's command line: flags become config overrides; bad flags exit 2 with one line on stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import vgpud._private
from vgpud._private.cli import main, parse_config
from vgpud._private.config import ConfigError, DaemonConfig


def test_every_flag(tmp_path: Path) -> None:
    cfg = parse_config(
        [
            "--sim=h100-80gb:2,a30-24gb",
            f"--state-dir={tmp_path / 'state'}",
            f"--socket={tmp_path / 's.sock'}",
            "--listen=127.0.0.1:7070",
            "--tls-cert=/srv.pem",
            "--tls-key=/srv-key.pem",
            "--tls-client-ca=/clients.pem",
            "--etcd=https://e1:2379, e2:2379",
            "--etcd-ca=/ca.pem",
            "--etcd-cert=/c.pem",
            "--etcd-key=/k.pem",
            "--cluster=lab",
            "--node-name=node-7",
            "--metrics-port=9400",
            "--metrics-host=0.0.0.0",
            "--lease-ttl=60",
            "--log-format=json",
            "--log-level=debug",
        ]
    )
    assert (cfg.backend, cfg.sim_spec) == ("sim", "h100-80gb:2,a30-24gb")
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.socket_path == tmp_path / "s.sock"
    assert cfg.tcp_listen == "127.0.0.1:7070"
    assert (cfg.tls.cert_file, cfg.tls.key_file, cfg.tls.client_ca_file) == (
        Path("/srv.pem"),
        Path("/srv-key.pem"),
        Path("/clients.pem"),
    )
    assert cfg.etcd.endpoints == ("https://e1:2379", "e2:2379")
    assert (cfg.etcd.ca_file, cfg.etcd.cert_file, cfg.etcd.key_file) == (
        Path("/ca.pem"),
        Path("/c.pem"),
        Path("/k.pem"),
    )
    assert cfg.etcd.cluster == "lab"
    assert cfg.node_name == "node-7"
    assert (cfg.metrics.port, cfg.metrics.host) == (9400, "0.0.0.0")
    assert cfg.lease.default_ttl_s == 60
    assert (cfg.log.format, cfg.log.level) == ("json", "debug")


def test_no_flags_is_the_default_config() -> None:
    cfg = parse_config([])
    assert cfg.backend == "nvml"
    assert cfg.etcd.endpoints == ()


def test_flags_override_config_file(tmp_path: Path) -> None:
    path = tmp_path / "vgpud.toml"
    path.write_text('node_name = "file"\nsim_spec = "a30-24gb"\n[metrics]\nport = 9000\n')
    cfg = parse_config(["--config", str(path), "--node-name", "flag"])
    assert (cfg.node_name, cfg.sim_spec, cfg.metrics.port) == ("flag", "a30-24gb", 9000)
    assert parse_config(["--config", str(path), "--backend", "nvml"]).backend == "nvml"


def test_empty_etcd_flag_means_embedded() -> None:
    assert parse_config(["--etcd", ""]).etcd.endpoints == ()


def test_bad_flag_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unrecognized arguments: --bogus"):
        parse_config(["--bogus"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--bogus"], "vgpud: error: unrecognized arguments: --bogus (see vgpud --help)"),
        (["--metrics-port", "http"], "vgpud: error: argument --metrics-port: invalid int value: 'http'"),
        (["--metrics-host", ""], "vgpud: error: --metrics-host: metrics.host: must not be empty"),
        (["--log-format", "xml"], "vgpud: error: argument --log-format: invalid choice: 'xml'"),
        (["--sim", "a30-24gb", "--backend", "nvml"], "vgpud: error: argument --backend: not allowed with"),
        (["--lease-ttl", "1"], "vgpud: error: --lease-ttl: lease.default_ttl_s: 1 is outside"),
        (["--node-name", "a b"], "vgpud: error: --node-name: node_name: 'a b' is not a valid node name"),
        (["--sim", "k80:1"], "vgpud: error: --sim: sim_spec: bad sim spec 'k80:1': unknown GPU model 'k80'"),
        (
            ["--config", "/nonexistent/vgpud.toml"],
            "vgpud: error: cannot read config file /nonexistent/vgpud.toml",
        ),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(expected)
    assert captured.err.count("\n") == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("vgpud ")


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--config",
        "--sim",
        "--backend",
        "--etcd-ca",
        "--lease-ttl",
        "--metrics-port",
        "--metrics-host",
        "--log-level",
    ):
        assert flag in out


def test_main_runs_the_daemon_with_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[DaemonConfig] = []

    def run(config: DaemonConfig) -> int:
        seen.append(config)
        return 3

    fake = types.ModuleType("vgpud._private.daemon")
    fake.run = run  # type: ignore[attr-defined]  # a stand-in for the real daemon module
    monkeypatch.setitem(sys.modules, "vgpud._private.daemon", fake)
    monkeypatch.setattr(vgpud._private, "daemon", fake, raising=False)
    assert main(["--sim", "", "--node-name", "n1"]) == 3
    assert [(c.node_name, c.backend, c.sim_spec) for c in seen] == [("n1", "sim", "")]


def _config_file(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "vgpud.toml"
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'node_name = "\xff\xfe"\n', r"vgpud\.toml: not UTF-8 text \(line 1, byte 14\); save it as UTF-8"),
        (b"# ok\nx = " + b"[" * 100_000 + b"\n", r"vgpud\.toml: not valid TOML: arrays or inline tables nested too"),
        (b"x = " + b"{a = " * 5_000 + b"\n", r"vgpud\.toml: not valid TOML: arrays or inline tables nested too"),
        (b"# " + b"x" * (1024 * 1024) + b"\n", r"vgpud\.toml: larger than 1 MiB; a vgpud config holds a few KiB"),
        (b"max_queue_length = 1" + b"0" * 5000 + b"\n", r"vgpud\.toml: not valid TOML: Exceeds the limit \(4300"),
        (b"[mig]\nkeep_warm_s = nan\n", r"vgpud\.toml: mig\.keep_warm_s: expected a finite number, got nan"),
    ],
    ids=["not utf-8", "deep arrays", "deep inline tables", "too large", "huge integer", "nan"],
)
def test_bad_config_files_exit_2_with_one_line(
    tmp_path: Path, content: bytes, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", _config_file(tmp_path, content)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.match(r"vgpud: error: \S+" + expected, captured.err)
    assert captured.err.count("\n") == 1


def test_a_directory_as_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"vgpud: error: cannot read config file {tmp_path}: Is a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config_file(tmp_path, b'node_name = "n"\n')
    Path(path).chmod(0)
    assert main(["--config", path]) == 2
    assert capsys.readouterr().err == f"vgpud: error: cannot read config file {path}: Permission denied\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--mig-keep-warm", "nan"], "--mig-keep-warm: mig.keep_warm_s: expected a finite number, got nan"),
        (["--mig-keep-warm", "inf"], "--mig-keep-warm: mig.keep_warm_s: expected a finite number, got inf"),
        (["--mig-keep-warm", "-5"], "--mig-keep-warm: mig.keep_warm_s: -5.0 must be from 0 to 604800 seconds"),
        (["--lease-ttl", str(2**64)], "--lease-ttl: lease.default_ttl_s: expected an integer that fits in 64 bits"),
        (["--metrics-port", str(2**63)], "--metrics-port: metrics.port: expected an integer that fits in 64 bits"),
    ],
)
def test_absurd_numeric_flags_exit_2_with_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"vgpud: error: {expected}")
    assert captured.err.count("\n") == 1


def test_the_console_script_prints_one_line_not_a_traceback(tmp_path: Path) -> None:
    path = _config_file(tmp_path, b"x = " + b"[" * 100_000 + b"\n")
    done = subprocess.run(
        [sys.executable, "-m", "vgpud", "--config", path], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"vgpud: error: {path}: not valid TOML: arrays or inline tables nested too deeply\n"

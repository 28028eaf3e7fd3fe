"""The unit and example config ship inside the vgpud package; `--print-unit` and `--print-config` print them."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from vgpud import service_files
from vgpud._private.cli import main, running_vgpud

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "vgpud.service"
CONFIG = ROOT / "systemd" / "vgpud.toml"
SHIPPED_EXEC_START = "ExecStart=/usr/local/bin/vgpud --config /etc/vgpu/vgpud.toml"
CONSOLE_SCRIPT = Path(sys.executable).parent / "vgpud"


def exec_start_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ExecStart=")]


def without_exec_start(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("ExecStart=")]


@pytest.mark.parametrize("name", [service_files.UNIT_FILE, service_files.CONFIG_FILE])
def test_package_files_are_links_to_systemd_dir(name: str) -> None:
    # One copy in the repository: an editor that replaced a link by a copy would let the two drift apart.
    packaged = Path(str(files(service_files).joinpath(name)))
    assert packaged.is_symlink(), f"{packaged} must stay a link to systemd/{name}"
    assert packaged.resolve() == (ROOT / "systemd" / name).resolve()


def test_read_gives_the_shipped_bytes() -> None:
    assert service_files.read(service_files.UNIT_FILE) == UNIT.read_bytes()
    assert service_files.read(service_files.CONFIG_FILE) == CONFIG.read_bytes()


def test_shipped_unit_has_one_exec_start_naming_the_default_install() -> None:
    assert exec_start_lines(UNIT.read_text()) == [SHIPPED_EXEC_START]


def test_print_config_is_the_example_byte_for_byte(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["--print-config"]) == 0
    out, err = capsysbinary.readouterr()
    assert out == CONFIG.read_bytes()
    assert err == b""


def test_print_unit_under_python_m_names_this_interpreter(
    capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [str(ROOT / "daemon" / "vgpud" / "__main__.py"), "--print-unit"])
    assert main(["--print-unit"]) == 0
    out = capsysbinary.readouterr().out.decode()
    python = service_files.unit_word(sys.executable)
    assert exec_start_lines(out) == [f"ExecStart={python} -m vgpud --config /etc/vgpu/vgpud.toml"]
    assert without_exec_start(out) == without_exec_start(UNIT.read_text())
    assert out.endswith("\n")


def test_print_unit_from_the_console_script_names_that_script(
    capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "opt vgpu" / "bin" / "vgpud"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(script)])
    assert running_vgpud() == [str(script)]
    assert main(["--print-unit"]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert exec_start_lines(out) == [f'ExecStart="{script}" --config /etc/vgpu/vgpud.toml']
    assert without_exec_start(out) == without_exec_start(UNIT.read_text())


@pytest.mark.parametrize(
    ("word", "written"),
    [
        ("/opt/vgpu/bin/vgpud", "/opt/vgpu/bin/vgpud"),
        ("/opt/my vgpu/vgpud", '"/opt/my vgpu/vgpud"'),
        ("/opt/100%/vgpud", "/opt/100%%/vgpud"),
        ("/opt/$HOME/vgpud", "/opt/$$HOME/vgpud"),
        ('/opt/a"b\\c', '"/opt/a\\"b\\\\c"'),
    ],
)
def test_unit_word_survives_systemd_parsing(word: str, written: str) -> None:
    assert service_files.unit_word(word) == written


def test_unit_text_keeps_the_arguments_and_the_rest() -> None:
    text = service_files.unit_text(["/x/vgpud"])
    assert exec_start_lines(text) == ["ExecStart=/x/vgpud --config /etc/vgpu/vgpud.toml"]
    assert len(text.splitlines()) == len(UNIT.read_text().splitlines())
    with pytest.raises(ValueError, match="at least the executable"):
        service_files.unit_text([])


def test_print_unit_and_print_config_together_is_a_flag_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print-unit", "--print-config"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_print_flags_skip_the_config_file(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    # An operator prints the example before any /etc/vgpu/vgpud.toml exists.
    assert main(["--print-config", "--config", "/nonexistent/vgpud.toml"]) == 0
    assert capsysbinary.readouterr().out == CONFIG.read_bytes()


@pytest.mark.skipif(not CONSOLE_SCRIPT.is_file(), reason=f"no vgpud console script at {CONSOLE_SCRIPT}")
def test_installed_console_script_prints_a_unit_that_runs_itself() -> None:
    done = subprocess.run([str(CONSOLE_SCRIPT), "--print-unit"], capture_output=True, text=True, timeout=60, check=True)
    script = service_files.unit_word(str(CONSOLE_SCRIPT))
    assert exec_start_lines(done.stdout) == [f"ExecStart={script} --config /etc/vgpu/vgpud.toml"]
    assert without_exec_start(done.stdout) == without_exec_start(UNIT.read_text())

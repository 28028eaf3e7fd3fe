"""configure_logging: JSON lines with bound context, console output, stdlib routing and levels."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from vgpud._private.log import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    own = {name: logging.getLogger(name).level for name in ("vgpud", "vgpu", "vgpuctl")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in own.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def json_lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_has_bound_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    structlog.contextvars.bind_contextvars(rpc="Acquire", request_id="r-1")
    structlog.get_logger("vgpud.test").info("granted", lease="l-9")
    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "granted"
    assert line["rpc"] == "Acquire"
    assert line["request_id"] == "r-1"
    assert line["lease"] == "l-9"
    assert line["level"] == "info"
    assert line["logger"] == "vgpud.test"
    assert isinstance(line["timestamp"], str)
    assert line["timestamp"].endswith("Z")


def test_auto_is_json_off_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("auto", "info")  # capsys's stderr is not a TTY
    structlog.get_logger("vgpud").warning("hello")
    assert json_lines(capsys.readouterr().err)[0]["event"] == "hello"


def test_console_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "info")
    structlog.get_logger("vgpud").info("hello", gpu="GPU-1")
    err = capsys.readouterr().err
    assert "hello" in err
    assert "gpu=GPU-1" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)


def test_stdlib_loggers_go_through_at_warning(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug")
    logging.getLogger("grpc._cython").info("chatty")
    logging.getLogger("grpc._cython").warning("careful %s", "now")
    structlog.get_logger("vgpud").debug("own debug")
    lines = json_lines(capsys.readouterr().err)
    assert [(x["logger"], x["event"], x["level"]) for x in lines] == [
        ("grpc._cython", "careful now", "warning"),
        ("vgpud", "own debug", "debug"),
    ]


def test_level_filters_own_logs(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "error")
    log = structlog.get_logger("vgpud")
    log.warning("dropped")
    log.error("kept")
    assert [x["event"] for x in json_lines(capsys.readouterr().err)] == ["kept"]


def test_reconfigure_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "info")
    configure_logging("json", "info")
    structlog.get_logger("vgpud").info("once")
    assert len(json_lines(capsys.readouterr().err)) == 1


def test_exceptions_are_rendered_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    try:
        int("boom")
    except ValueError:
        structlog.get_logger("vgpud").exception("failed")
    (line,) = json_lines(capsys.readouterr().err)
    assert "ValueError: invalid literal" in str(line["exception"])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("xml", "info")
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("json", "verbose")

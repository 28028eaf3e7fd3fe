"""structlog setup: JSON lines for journald and log shippers, readable console output on a terminal.

Both structlog loggers and stdlib `logging` (grpc, asyncio, ...) end in one stderr handler with the same
renderer, so every line has an ISO UTC timestamp, a level, and the context bound per RPC with
`structlog.contextvars.bind_contextvars`. vgpu's own loggers log at the configured level; everything else
at warning and above.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import Processor

_OWN_LOGGERS = ("vgpud", "vgpu", "vgpuctl")
_FORMATS = ("auto", "json", "console")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # StreamHandler is generic only in stubs
    """Writes to whatever sys.stderr is at emit time, so a swapped stderr (tests, daemonisers) is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        """Point at the current stderr, then emit."""
        self.stream = sys.stderr
        super().emit(record)


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning, error or critical")
    return number


def configure_logging(format: str, level: str) -> None:
    """Route structlog and stdlib logging to stderr as JSON or console lines; safe to call again."""
    if format not in _FORMATS:
        raise ValueError(f"unknown log format {format!r}; use {', '.join(_FORMATS)}")
    own_level = _level_number(level)
    as_json = format == "json" or (format == "auto" and not sys.stderr.isatty())

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if as_json:
        tail: list[Processor] = [structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer()
    else:
        tail = []
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: configure_logging may run again (tests, reconfiguration) and must take effect.
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
        )
    )
    handler.vgpud_handler = True  # type: ignore[attr-defined]  # marks the handler a re-configure replaces

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "vgpud_handler", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, own_level))
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(own_level)

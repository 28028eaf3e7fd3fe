"""RLIMIT_NOFILE raised to its hard limit at start: every connection is a descriptor, and 1,024 is too few."""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger("vgpud")


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit (no privilege needed); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit", soft=soft, hard=hard, error=str(exc))
            return soft
        return target
    return soft

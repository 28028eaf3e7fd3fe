"""systemd notifications (sd_notify protocol): READY, STOPPING, STATUS and watchdog pings.

Messages are datagrams to the Unix socket in $NOTIFY_SOCKET (a path, or an abstract name when it starts
with "@"). Without systemd every call is a no-op returning False; nothing here raises or logs, so the
daemon can call these from any code path.
"""

from __future__ import annotations

import os
import socket


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None  # unset, or a transport we do not speak (vsock:...)


def notify(state: str) -> bool:
    """Send one sd_notify message ("READY=1", ...); True when it was handed to the socket."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # a full receiver queue must not stall the daemon
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def ready() -> bool:
    """Start-up finished: systemd marks the unit active (Type=notify)."""
    return notify("READY=1")


def stopping() -> bool:
    """Shutdown began: systemd shows the unit as deactivating."""
    return notify("STOPPING=1")


def watchdog_ping() -> bool:
    """Reset the WatchdogSec= timer."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """One-line status for `systemctl status`."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from $WATCHDOG_USEC; None when no watchdog applies to this process.

    Ping at half this interval. $WATCHDOG_PID, when set, must be this process.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None

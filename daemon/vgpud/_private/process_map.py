"""Which host processes belong to which lease: what the node watchdog may look at and, if need be, stop.

Two kinds of evidence, both checked by the kernel rather than taken on a client's word:
- the environment a process was started with carries `VGPU_LEASE_ID` (workers launched with `lease.env`);
- a process that acquired its lease itself reports an identity socket (see vgpu's process_identity): the
  kernel names the listener's pid and uid (SO_PEERCRED), and the process answers with the SHA-256 of the
  lease tokens it holds, so a lease's reports can only point at processes that hold that lease.
Blocking (reads /proc, connects sockets): the watchdog runs these in a worker thread.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vgpu._private.process_identity import PREFIX as IDENTITY_PREFIX

_PROC = Path("/proc")
_ENV_KEY: Final = b"VGPU_LEASE_ID="
_ANSWER_LIMIT: Final = 64 * 1024
_NAME_LIMIT: Final = 100
"""Abstract socket names may be 107 bytes; ours are much shorter."""
_DIGEST_LENGTH: Final = 64


@dataclass(frozen=True, slots=True)
class Peer:
    """A process behind an identity socket, as the kernel names it."""

    pid: int
    uid: int
    token_digests: frozenset[str]
    """SHA-256 (hex) of the lease tokens the process holds."""


def valid_identity_name(name: str) -> bool:
    """Whether a reported socket name is one the daemon will connect to (ours, printable, short)."""
    rest = name.removeprefix(IDENTITY_PREFIX)
    return (
        bool(rest)
        and rest != name
        and len(name) <= _NAME_LIMIT
        and all(c.isascii() and (c.isalnum() or c == "-") for c in rest)
    )


def peer(name: str, *, timeout: float = 0.5) -> Peer | None:
    """Who listens on the abstract socket `name` and which leases it holds; None when nobody answers."""
    if not valid_identity_name(name):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect("\0" + name)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        chunks: list[bytes] = []
        size = 0
        while size < _ANSWER_LIMIT:
            chunk = conn.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        conn.close()
    lines = b"".join(chunks).decode("ascii", "replace").split()
    digests = frozenset(line for line in lines if len(line) == _DIGEST_LENGTH)
    return Peer(pid=pid, uid=uid, token_digests=digests) if pid > 0 else None


def environment_leases(lease_ids: Collection[str], proc: Path = _PROC) -> dict[str, set[int]]:
    """Processes started with VGPU_LEASE_ID set to one of `lease_ids`: lease id -> pids.

    Processes whose environment this daemon may not read (other users, when it does not run as root) are
    skipped: the daemon runs as root on a GPU host, as its systemd unit does.
    """
    wanted = set(lease_ids)
    found: dict[str, set[int]] = {}
    if not wanted:
        return found
    for entry in _pid_dirs(proc):
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue
        for item in raw.split(b"\0"):
            if item.startswith(_ENV_KEY):
                lease_id = item[len(_ENV_KEY) :].decode("ascii", "replace")
                if lease_id in wanted:
                    found.setdefault(lease_id, set()).add(int(entry.name))
                break
    return found


def _pid_dirs(proc: Path) -> Iterable[Path]:
    try:
        entries = list(proc.iterdir())
    except OSError:
        return []
    return [e for e in entries if e.name.isdigit()]


def protected_pids(proc: Path = _PROC) -> frozenset[int]:
    """Processes the watchdog never signals: init, the daemon itself and its ancestors (e.g. its launcher)."""
    protected = {0, 1, os.getpid()}
    pid = os.getpid()
    while pid > 1:
        try:
            stat = (proc / str(pid) / "stat").read_text()
        except OSError:
            break
        # The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        protected.add(pid)
    return frozenset(protected)


def alive(pid: int, proc: Path = _PROC) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_uids(pid: int, proc: Path = _PROC) -> tuple[int, int] | None:
    """(real, effective) uid of a process; None when it is gone."""
    try:
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            return int(fields[1]), int(fields[2])
    return None

"""Whom the node watchdog may signal: only processes running as the lease's verified owner.

Defence in depth: even if a lease were mapped to the wrong processes (a forged report, a reused pid), vgpud,
which runs as root, never stops a process of another user. Processes running as root are stopped only when
the operator allows it ([watchdog] signal_root_processes), since a root process in a lease is unusual.
"""

from __future__ import annotations

from collections.abc import Callable

from vgpud._private.core.lease_record import LeaseRecord


def owner_uid(lease: LeaseRecord, node: str, uid_of: Callable[[str], int | None]) -> int | None:
    """The lease owner's uid on this node: the kernel-proven one if it acquired here, else its name's uid here."""
    if lease.owner.uid is not None and lease.owner.host == node:
        return lease.owner.uid
    return uid_of(lease.owner.user) if lease.owner.user else None


def refusal_to_signal(process: tuple[int, int] | None, owner: int | None, *, allow_root: bool) -> str | None:
    """Why a process with (real, effective) uids `process` must not be signalled for a lease of uid `owner`.

    None means it may be signalled.
    """
    if process is None:
        return "the process is gone"
    real, effective = process
    if 0 in (real, effective) and owner != 0:
        return None if allow_root else "it runs as root ([watchdog] signal_root_processes is false)"
    if owner is None:
        return "the lease's owner has no uid on this host"
    if real != owner:
        return f"it runs as uid {real}, the lease belongs to uid {owner}"
    return None

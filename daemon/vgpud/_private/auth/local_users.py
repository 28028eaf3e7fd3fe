"""Names for the uids and gids the kernel reports, from this host's user database, off the event loop.

The user database may be LDAP or SSSD behind NSS, where one lookup can block for seconds: lookups run in a
worker thread and their answers are kept for a minute (bounded), so one slow directory never stalls calls.
"""

from __future__ import annotations

import asyncio
import grp
import pwd
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Final

from vgpud._private.auth.credentials import Claims
from vgpud._private.auth.identity import Identity, Role

CACHE_TTL_S: Final = 60.0
CACHE_ENTRIES: Final = 4096


def user_name(uid: int) -> str:
    """The host's name for `uid`, or "uid:N" when it has none (blocking: NSS)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def group_names(gids: Sequence[int]) -> frozenset[str]:
    """The host's names of `gids`; gids without a name are left out (blocking: NSS)."""
    names = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return frozenset(names)


def uid_of(name: str) -> int | None:
    """The uid of user `name` on this host ("uid:N" names their uid), None when unknown (blocking: NSS)."""
    if name.startswith("uid:"):
        digits = name[4:]
        return int(digits) if digits.isdigit() else None
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


class LocalUsers:
    """Identities for credential claims: names from NSS (cached), the admin role from uid 0 or admin groups."""

    def __init__(
        self,
        admin_groups: Collection[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        lookup: Callable[[int, Sequence[int]], tuple[str, frozenset[str]]] | None = None,
    ) -> None:
        self._admin_groups = frozenset(admin_groups)
        self._clock = clock
        self._lookup = lookup or (lambda uid, gids: (user_name(uid), group_names(gids)))
        self._cache: OrderedDict[tuple[int, tuple[int, ...]], tuple[float, str, frozenset[str]]] = OrderedDict()

    async def identity(self, claims: Claims) -> Identity:
        """The caller the claims describe."""
        key = (claims.uid, claims.gids)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is None or now - hit[0] > CACHE_TTL_S:
            name, groups = await asyncio.to_thread(self._lookup, claims.uid, claims.gids)
            hit = (now, name, groups)
            self._cache[key] = hit
            if len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        _, name, groups = hit
        admin = claims.uid == 0 or bool(groups & self._admin_groups)
        return Identity(
            role=Role.ADMIN if admin else Role.USER,
            name=name,
            groups=groups,
            uid=claims.uid,
            gids=claims.gids,
            pid=claims.pid,
        )

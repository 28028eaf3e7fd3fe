"""The finer rules behind the authorization table, applied by the handlers that know the lease or project.

Project membership, priority classes limited to projects, lease ownership, and what of other people's
leases a user may see.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from vgpu._private import reasons
from vgpud._private.auth.identity import Identity
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.priorities import PriorityClass
from vgpud._private.core.projects import DEFAULT_PROJECT, Quota
from vgpud._private.refusal import Refusal

MEMBER_RE: Final = re.compile(r"(user|group):([A-Za-z0-9._][A-Za-z0-9._-]{0,62}|uid:\d{1,10})")
"""`user:NAME`, `group:NAME`; `user:uid:N` for a uid without a name in the user database."""
MAX_MEMBERS: Final = 1000


def check_members(members: Collection[str]) -> tuple[str, ...]:
    """Project members as given by an admin, deduplicated in order; Refusal naming the first bad one."""
    if len(members) > MAX_MEMBERS:
        raise Refusal(reasons.INVALID_REQUEST, f"{len(members)} members is more than {MAX_MEMBERS}: use groups")
    seen: dict[str, None] = {}
    for member in members:
        if not MEMBER_RE.fullmatch(member):
            raise Refusal(
                reasons.INVALID_REQUEST,
                f"member {member[:80]!r} is not user:NAME or group:NAME (e.g. user:alice, group:ml-team)",
            )
        seen[member] = None
    return tuple(seen)


def is_member(who: Identity, members: Collection[str]) -> bool:
    """Whether `who` is named by `members`: as user:NAME, or through a group:NAME it belongs to."""
    return f"user:{who.name}" in members or any(f"group:{group}" in members for group in who.groups)


@dataclass(frozen=True, slots=True)
class Access:
    """Acquire-time rules from the config ([auth] open_default_project, classes' `projects`)."""

    open_default_project: bool = True
    """Every user may acquire in the `default` project; false: only its members (and admins)."""

    def check_acquire(self, who: Identity, project: str, quota: Quota | None, priority: PriorityClass) -> None:
        """Refusal unless `who` may acquire in `project` with class `priority`."""
        name = project or DEFAULT_PROJECT
        if priority.projects and name not in priority.projects:
            raise Refusal(
                reasons.PRIORITY_NOT_ALLOWED,
                f"priority class {priority.name!r} is reserved for project(s) {', '.join(priority.projects)}; "
                f"use another class in {name!r}",
            )
        if who.admin:
            return
        if name == DEFAULT_PROJECT and self.open_default_project:
            return
        members = quota.members if quota is not None else ()
        if not is_member(who, members):
            raise Refusal(
                reasons.NOT_PROJECT_MEMBER,
                f"{who.name} is not a member of project {name!r}: an admin adds you with "
                f"`vgpuctl quota set {name} --members ...,user:{who.name}`",
            )


def check_owner(who: Identity, lease: LeaseRecord) -> None:
    """Refusal unless `who` owns the lease or is an admin (the token was checked already)."""
    if who.admin or who.same_person(lease.owner.user):
        return
    raise Refusal(
        reasons.NOT_LEASE_OWNER,
        f"lease {lease.id} belongs to another user; only its owner or an admin may act on it",
    )


def sees_everything(who: Identity | None, lease: LeaseRecord) -> bool:
    """Whether `who` may see the lease's owner and environment (its owner and admins do; others see the rest)."""
    return who is not None and (who.admin or who.same_person(lease.owner.user))

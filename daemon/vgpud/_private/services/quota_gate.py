"""Whether an acquire may be granted by the asked daemon at once, or must go to the leader's queue.

The leader checks quotas exactly (one decider). The fast path stays for what cannot break a quota: a class
that may borrow, of a project with no limit or within it. In-quota-only classes and requests that would
cross a limit go through the queue, where the leader holds or refuses them with the reason. The check here
reads this daemon's view; the grant's own write checks the limit again, exactly, against every other
daemon's grants (project_gate.py), and a grant refused there goes through the queue too.
"""

from __future__ import annotations

from vgpu._private import reasons
from vgpud._private.core.projects import DEFAULT_PROJECT, Usage, project_of, usage_by_project
from vgpud._private.core.queue_order import asked
from vgpud._private.grants.allocator import AcquireSpec
from vgpud._private.refusal import Refusal
from vgpud._private.services.serving import Serving


def fast_path_allowed(s: Serving, spec: AcquireSpec) -> bool:
    """True when granting locally cannot break the project's quota."""
    if s.classes.get(spec.priority).in_quota_only:
        return False
    quota = s.view.quota(spec.project or DEFAULT_PROJECT)
    if quota is None or not (quota.value.limit_milli or quota.value.limit_memory_bytes):
        return True
    project = spec.project or DEFAULT_PROJECT
    mine = (v.value for v in s.view.live_leases() if project_of(v.value) == project)
    used = usage_by_project(mine).get(project, Usage())
    grown = asked(spec.shape)
    if spec.shape.compute_milli_max:
        grown = Usage(spec.shape.compute_milli_max * spec.shape.count, grown.memory_bytes)
    return not (used + grown).over_limit(quota.value)


def goes_to_queue(refusal: Refusal, *, wait: bool) -> bool:
    """Whether a fast-path refusal sends the request on to the leader's queue instead of back to its client.

    NO_CAPACITY when the request may wait; OVER_QUOTA always: a grant racing it took the project to its
    limit, and the leader now holds or refuses it exactly as if the fast path had not been tried.
    """
    return refusal.reason == reasons.OVER_QUOTA or (wait and refusal.reason == reasons.NO_CAPACITY)

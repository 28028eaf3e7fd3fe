"""ListAudit: the pool's audit records for `vgpuctl audit`, read from etcd by any daemon."""

from __future__ import annotations

from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2
from vgpud._private.auth.audit_records import AuditEntry
from vgpud._private.refusal import Refusal
from vgpud._private.services import convert, validation
from vgpud._private.services.serving import Serving

DEFAULT_SINCE_S = 3600.0
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


async def list_audit(s: Serving, request: admin_pb2.ListAuditRequest) -> admin_pb2.ListAuditResponse:
    """Records of the asked window (and identity), oldest first, at most `limit` (the newest kept)."""
    if s.audit is None:
        raise Refusal(reasons.NOT_IMPLEMENTED, "this vgpud keeps no audit trail")
    since = request.since.ToTimedelta().total_seconds() if request.HasField("since") else DEFAULT_SINCE_S
    longest = s.audit_retention_days * 86400
    if not 0 < since <= longest:
        raise Refusal(
            reasons.INVALID_REQUEST,
            f"since {since:g}s is outside 1s..{s.audit_retention_days} days ([audit] retention_days): ask for less",
        )
    limit = request.limit or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise Refusal(reasons.INVALID_REQUEST, f"limit {limit} is above {MAX_LIMIT}: narrow --since or --identity")
    who = validation.bounded_text("identity", request.identity)
    entries, truncated = await s.audit.read(since, who, limit)
    return admin_pb2.ListAuditResponse(records=[_record(e) for e in entries], truncated=truncated)


def _record(entry: AuditEntry) -> admin_pb2.AuditRecord:
    return admin_pb2.AuditRecord(
        time=convert.timestamp(entry.time),
        node=entry.node,
        user=entry.user,
        identity=entry.identity,
        role=entry.role,
        method=entry.method,
        target=entry.target,
        outcome=entry.outcome,
        reason=entry.reason,
        message=entry.message,
        peer=entry.peer,
        repeats=entry.repeats,
    )

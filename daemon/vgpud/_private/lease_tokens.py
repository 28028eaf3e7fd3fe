"""Lease identity and ownership: ids derived from request ids, tokens only the asking client holds.

Only SHA-256 digests of tokens and request ids are stored, so etcd readers cannot act as a lease's owner.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from vgpu._private import reasons
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.refusal import Refusal


def hash_secret(text: str) -> str:
    """Hex SHA-256; tokens and request ids are stored only this way."""
    return hashlib.sha256(text.encode()).hexdigest()


def lease_identity(request_id: str) -> str:
    """The lease id a request gets: derived from its request id (retries find it), else random."""
    return f"lease-{hash_secret(request_id)[:12]}" if request_id else f"lease-{secrets.token_hex(6)}"


def lease_token(lease_id: str, request_id: str) -> str:
    """`<lease_id>.<secret>`; with a request id the secret is derived from it.

    So a retried acquire can hand back the same token without the daemon ever storing it.
    """
    if request_id:
        secret = hmac.new(request_id.encode(), lease_id.encode(), hashlib.sha256).hexdigest()[:40]
    else:
        secret = secrets.token_hex(20)
    return f"{lease_id}.{secret}"


def check_token(lease: LeaseRecord, token: str) -> None:
    """Refuse unless `token` is this lease's token."""
    if not hmac.compare_digest(hash_secret(token), lease.token_sha256):
        raise Refusal(reasons.LEASE_TOKEN_MISMATCH, f"the token does not belong to lease {lease.id}")

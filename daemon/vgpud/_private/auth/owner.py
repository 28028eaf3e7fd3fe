"""A lease's owner as stored: the verified caller, never what the client wrote into the request."""

from __future__ import annotations

from vgpud._private.auth.identity import Identity
from vgpud._private.core.model import Owner
from vgpud._private.services.validation import bounded_text


def owner_of(who: Identity, node: str, description: str) -> Owner:
    """The owner record of a lease `who` acquires through the vgpud of `node`; only `description` is theirs."""
    return Owner(
        user=who.name,
        host=node if who.local else who.peer,
        pid=who.pid,
        description=bounded_text("owner.description", description),
        identity=who.proof,
        uid=who.uid,
    )

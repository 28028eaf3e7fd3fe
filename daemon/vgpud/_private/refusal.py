"""Refusals: the daemon's one error type for requests it will not or cannot do.

Logic raises `Refusal(reason, message)`; the gRPC edge turns it into a status code with an ErrorInfo.
"""

from __future__ import annotations


class Refusal(Exception):  # noqa: N818 -- a refusal is an answer, not an error of the daemon
    """A request that is answered with an error: `reason` is a constant from vgpu._private.reasons."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

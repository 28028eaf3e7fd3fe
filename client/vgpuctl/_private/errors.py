"""What the user sees when a command fails: an exit code and one line saying what to change.

`describe_rpc_error` reads the daemon's google.rpc.ErrorInfo reason (domain vgpu.dev) and status message, so a
refusal prints as `vgpuctl: error: GPU_BUSY: GPU GPU-... has 2 leases; release or evict them first`.
Some reasons add a hint naming the vgpuctl command that helps, filled with the lease or project asked about.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, cast

import grpc
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]  # googleapis-common-protos ships no stubs
from grpc_status import rpc_status

from vgpu._private import reasons
from vgpu._private.tls import TlsConfig
from vgpuctl._private import exit_codes

PREFIX: Final = "vgpuctl: error: "

_EXIT_BY_CODE: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.INVALID_ARGUMENT: exit_codes.USAGE,
    grpc.StatusCode.NOT_FOUND: exit_codes.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: exit_codes.UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: exit_codes.UNREACHABLE,
}

_EXIT_BY_REASON: Final[dict[str, int]] = {
    reasons.UNKNOWN_PROJECT: exit_codes.NOT_FOUND,  # a project named that has no quota: not found, not bad usage
}
"""Reasons whose exit code differs from what their status code maps to."""

_HINTS: Final[dict[str, str]] = {
    reasons.NOT_PREEMPTIBLE: (
        "lease {lease} is of a non-preemptible priority class; `vgpuctl evict {lease}` revokes it at once, "
        "without a checkpoint"
    ),
    reasons.PROJECT_NOT_FOUND: (
        "`vgpuctl quota list` shows the projects; `vgpuctl quota set {project} --deserved N` creates a quota"
    ),
    reasons.UNKNOWN_PROJECT: (
        "`vgpuctl quota list` shows the projects; `vgpuctl quota set {project} --deserved N` creates a quota"
    ),
    reasons.PROJECT_BUSY: (
        "see `vgpuctl leases --project {project}` and `vgpuctl queue --project {project}`; "
        "its leases must end and its requests leave the queue first"
    ),
    reasons.OVER_QUOTA: "`vgpuctl quota get {project}` shows its deserved quota and limit",
    reasons.UNKNOWN_PRIORITY: "`vgpuctl quota list` lists the priority classes",
}
"""Per reason, what to do next; {lease} and {project} are filled from the request (else LEASE_ID, PROJECT)."""

_SUBJECT_PLACEHOLDERS: Final = {"lease": "LEASE_ID", "project": "PROJECT"}

_CHECK_DAEMON: Final = (
    "check `systemctl status vgpud` on that host, or point --endpoint / VGPU_ENDPOINT at a running daemon"
)


class CliError(Exception):
    """A command failed in a way the user can act on; `app.main` prints `line` and exits with `exit_code`."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message

    @property
    def line(self) -> str:
        """The one stderr line: prefix + the message with any line breaks folded."""
        return PREFIX + one_line(self.message)


def one_line(text: str) -> str:
    """Fold whitespace runs (newlines included) into single spaces: an error is exactly one line."""
    return " ".join(text.split())


def describe_rpc_error(
    error: grpc.RpcError,
    *,
    endpoint: str,
    timeout: float,
    rpc: str,
    subject: Mapping[str, str] | None = None,
    tls: TlsConfig | None = None,
) -> CliError:
    """The CliError for a failed call: exit code from the status code, text from ErrorInfo and the message.

    `subject` names what the request was about ('lease', 'project') for the hints of some reasons.
    """
    call = cast(grpc.Call, error)  # what a unary call raises is both an RpcError and its finished Call
    code = call.code()
    details = call.details() or ""
    exit_code = _EXIT_BY_CODE.get(code, exit_codes.REFUSED)
    reason, message = _error_info(call)
    if reason:
        text = f"{reason}: {message or details or code.name}"
        hint = _HINTS.get(reason)
        if hint:
            text += "; " + hint.format_map({**_SUBJECT_PLACEHOLDERS, **(subject or {})})
        return CliError(_EXIT_BY_REASON.get(reason, exit_code), text)
    if code is grpc.StatusCode.UNAVAILABLE:
        diagnosis = tls.diagnose(details) if tls is not None else None
        if diagnosis is not None:
            return CliError(exit_codes.REFUSED, f"{diagnosis[0]}: {diagnosis[1]} (vgpud at {endpoint})")
        return CliError(exit_code, f"cannot reach vgpud at {endpoint} ({details or 'unavailable'}); {_CHECK_DAEMON}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(
            exit_code,
            f"vgpud at {endpoint} did not answer {rpc} within {timeout:g}s; {_CHECK_DAEMON}, or raise --timeout",
        )
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return CliError(
            exit_code,
            f"UNIMPLEMENTED: the server at {endpoint} does not serve {rpc}; is it vgpud, and as new as vgpuctl?",
        )
    return CliError(exit_code, f"{code.name}: {details or 'no details given'}")


def _error_info(call: grpc.Call) -> tuple[str, str]:
    """(reason, message) from the rich status; ("", "") when the server sent no ErrorInfo."""
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # the rich status disagrees with the call's code or message: ignore it
        return "", ""
    if status is None:
        return "", ""
    fallback = ""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason:
            if info.domain == reasons.DOMAIN:
                return info.reason, status.message
            fallback = fallback or info.reason
    return fallback, status.message if fallback else ""

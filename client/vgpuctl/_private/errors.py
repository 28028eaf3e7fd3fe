"""What the user sees when a command fails: an exit code and one line saying what to change.

`describe_rpc_error` reads the daemon's google.rpc.ErrorInfo reason (domain vgpu.dev) and status message, so a
refusal prints as `vgpuctl: error: GPU_BUSY: GPU GPU-... has 2 leases; release or evict them first`.
"""

from __future__ import annotations

from typing import Final, cast

import grpc
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]  # googleapis-common-protos ships no stubs
from grpc_status import rpc_status

from vgpu._private import reasons
from vgpuctl._private import exit_codes

PREFIX: Final = "vgpuctl: error: "

_EXIT_BY_CODE: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.INVALID_ARGUMENT: exit_codes.USAGE,
    grpc.StatusCode.NOT_FOUND: exit_codes.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: exit_codes.UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: exit_codes.UNREACHABLE,
}

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


def describe_rpc_error(error: grpc.RpcError, *, endpoint: str, timeout: float, rpc: str) -> CliError:
    """The CliError for a failed call: exit code from the status code, text from ErrorInfo and the message."""
    call = cast(grpc.Call, error)  # what a unary call raises is both an RpcError and its finished Call
    code = call.code()
    details = call.details() or ""
    exit_code = _EXIT_BY_CODE.get(code, exit_codes.REFUSED)
    reason, message = _error_info(call)
    if reason:
        return CliError(exit_code, f"{reason}: {message or details or code.name}")
    if code is grpc.StatusCode.UNAVAILABLE:
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

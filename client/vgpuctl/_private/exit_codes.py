"""vgpuctl's exit codes, so that scripts can tell "refused" from "not found" from "daemon down".

| code | meaning |
|---|---|
| 0 | done |
| 1 | the daemon refused: FAILED_PRECONDITION, ABORTED, PERMISSION_DENIED, RESOURCE_EXHAUSTED and every other
|   | refusal not listed below (also: `vgpuctl health` found the daemon not serving) |
| 2 | bad usage (unknown verb or flag, bad value) or the daemon answered INVALID_ARGUMENT |
| 3 | not found: the lease, GPU, node or project named does not exist (NOT_FOUND; also UNKNOWN_PROJECT) |
| 4 | cannot reach the daemon: UNAVAILABLE or DEADLINE_EXCEEDED (also when the daemon is up but cannot reach
|   | etcd); the message names the endpoint and what to check |
"""

from __future__ import annotations

from typing import Final

OK: Final = 0
REFUSED: Final = 1
USAGE: Final = 2
NOT_FOUND: Final = 3
UNREACHABLE: Final = 4

EPILOG: Final = (
    "Exit codes: 0 ok; 1 the daemon refused (FAILED_PRECONDITION, ABORTED, PERMISSION_DENIED, "
    "RESOURCE_EXHAUSTED, ...); 2 bad usage or INVALID_ARGUMENT; 3 not found (NOT_FOUND, UNKNOWN_PROJECT); "
    "4 cannot reach the daemon (UNAVAILABLE, DEADLINE_EXCEEDED)."
)
"""The --help epilog: the table above in one paragraph (typer reflows epilog text)."""

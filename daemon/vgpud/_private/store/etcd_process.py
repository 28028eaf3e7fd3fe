"""Running etcd as a child process: spawned tied to its parent, probed for health, its log's tail quoted.

Shared by EmbeddedEtcd (the daemon's private etcd) and the tests' multi-member cluster launcher.

The child gets PR_SET_PDEATHSIG=SIGKILL, so a parent killed with -9 leaves no etcd behind. It is set by a
tiny Python launcher that then execs etcd (the signal survives exec), not by a `preexec_fn`: that would
force a real fork() of a process that runs gRPC threads, whose fork handlers, or any Python code in the
child, can deadlock or abort it before exec. Without preexec_fn, Popen can use vfork and runs no Python
code in the child. Linux delivers the signal when the spawning *thread* exits, not the process: spawn from
a thread that lives as long as the child should.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

# argv: parent pid, program, its arguments. PR_SET_PDEATHSIG (1) survives the exec; the getppid check
# catches a parent that died before prctl took effect. Exit codes follow the shell's: 126 cannot set up,
# 127 cannot run the program; the reason goes to the child's output (the log).
_LAUNCHER = """
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:
    sys.stderr.write("cannot set the parent-death signal: " + os.strerror(ctypes.get_errno()) + "\\n")
    os._exit(126)
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
try:
    os.execv(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write("cannot run " + sys.argv[2] + ": " + str(exc.strerror or exc) + "\\n")
    os._exit(127)
"""
HEALTH_TIMEOUT_S = 1.0


def launcher_argv(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped in the launcher that sets the parent-death signal, then execs `argv[0]` in its place."""
    if not sys.executable:
        raise OSError("no Python interpreter (sys.executable is empty) to launch etcd with")
    # -I -S: no user site, no PYTHON* variables, no site import: the launcher starts fast and predictably.
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]


def spawn_tied_to_parent(
    argv: Sequence[str], log: BinaryIO, *, pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """Start `argv` with its output in `log`, in its own session, SIGKILLed when the calling thread ends.

    Raises OSError when it cannot be started at all; a program that cannot be run exits with 127 instead.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}  # no stray ETCD_* flags
    return subprocess.Popen(  # noqa: S603 -- argv is ours, not user text for a shell
        launcher_argv(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        pass_fds=tuple(pass_fds),
        start_new_session=True,  # a Ctrl-C on the parent's terminal reaches only the parent
    )


def healthy(conn: http.client.HTTPConnection) -> bool:
    """Whether etcd's /health on `conn` says {"health": "true"}; closes `conn` (http.client: no proxy lookup)."""
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = response.read()
        return response.status == http.client.OK and json.loads(body).get("health") == "true"
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def log_tail(log_file: Path, offset: int, lines: int) -> str:
    """The last `lines` lines written to `log_file` after `offset` (this run's), "" when it cannot be read."""
    try:
        with log_file.open("rb") as log:
            log.seek(offset)
            text = log.read()[-16384:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])

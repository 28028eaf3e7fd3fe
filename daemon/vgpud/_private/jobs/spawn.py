"""Start one rank of a job as its user: join the job's cgroup, drop to the user, then exec the command.

vgpud runs this file as a script (`python -I -S spawn.py FD`, with an empty environment, so nothing a user
sends runs before the privileges are dropped) and writes a JSON spec to the pipe FD: argv, env, cwd, uid, gid,
groups, cgroup (a cgroup.procs path or ""). Doing this in a fresh process, and not in a preexec_fn of the
threaded daemon, is what makes it safe; joining the cgroup before exec means every process the rank starts
is in it too. It imports only the standard library, keeps to it, and reports its own failures on stderr
with the shell's statuses: 126 not executable, 127 not found, 1 anything else.
"""

import ctypes
import json
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _fail(status: int, message: str) -> None:
    sys.stderr.write(f"vgpu: {message}\n")
    sys.stderr.flush()
    os._exit(status)


def _read_spec(fd: int) -> dict[str, object]:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    spec: dict[str, object] = json.loads(b"".join(chunks))
    return spec


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when vgpud dies (set after the uid change, which would clear it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def main() -> None:
    """Join, drop, exec (see the module docstring)."""
    parent = os.getppid()
    spec = _read_spec(int(sys.argv[1]))
    os.setsid()
    cgroup = str(spec["cgroup"])
    if cgroup:
        try:
            with open(cgroup, "w") as procs:
                procs.write(str(os.getpid()))
        except OSError as exc:
            _fail(1, f"cannot join the job's cgroup {cgroup}: {exc.strerror}")
    uid, gid = int(str(spec["uid"])), int(str(spec["gid"]))
    groups = [int(g) for g in spec["groups"]]  # type: ignore[attr-defined]  # a JSON list from vgpud
    if os.getuid() == 0 and uid != 0:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
    _die_with_parent(parent)
    argv = [str(a) for a in spec["argv"]]  # type: ignore[attr-defined]  # a JSON list from vgpud
    env = {str(k): str(v) for k, v in spec["env"].items()}  # type: ignore[attr-defined]  # a JSON object
    cwd = str(spec["cwd"])
    try:
        os.chdir(cwd)
    except OSError as exc:
        _fail(1, f"cannot enter {cwd}: {exc.strerror}")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 -- the user's own command, as the user
    except FileNotFoundError:
        _fail(127, f"{argv[0]}: command not found")
    except PermissionError:
        _fail(126, f"{argv[0]}: not executable")
    except OSError as exc:
        _fail(126, f"{argv[0]}: cannot run: {exc.strerror}")


if __name__ == "__main__":
    main()

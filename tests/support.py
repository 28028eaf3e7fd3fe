"""Test helpers: free ports, waiting for a process to end, etcd chores the Store API lacks, a test PKI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from etcd3aio import Etcd3Client

from vgpu._private import pki
from vgpud._private.store.embedded_etcd import EmbeddedEtcd
from vgpud._private.store.embedded_pki import EtcdTlsFiles
from vgpud._private.store.etcd_store import EtcdStore


@dataclass(frozen=True)
class SharedEtcd:
    """An embedded etcd that several daemons of a test share: where it listens, the client files it requires."""

    endpoint: str
    tls: EtcdTlsFiles

    @classmethod
    def of(cls, etcd: EmbeddedEtcd) -> SharedEtcd:
        """The running `etcd`."""
        return cls(etcd.endpoint, etcd.client_tls)

    @property
    def args(self) -> tuple[str, ...]:
        """The vgpud flags that point a daemon at it: `--etcd` and the TLS files."""
        return ("--etcd", self.endpoint, *self.tls.vgpud_flags())

    async def connect(self, connect_timeout: float = 10.0) -> EtcdStore:
        """A store on it (close it when done)."""
        return await EtcdStore.connect([self.endpoint], connect_timeout=connect_timeout, **self.tls.store_args())

    async def read(self, key: str) -> bytes | None:
        """The value of `key`, None when absent."""
        store = await self.connect()
        try:
            kv = await store.get(key, timeout=5)
            return kv.value if kv is not None else None
        finally:
            await store.close()


def free_port() -> int:
    """A 127.0.0.1 TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free 127.0.0.1 ports (all bound at once, so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def open_pidfd(pid: int) -> int:
    """A pidfd for `pid` (Linux >= 5.3): it becomes readable when that process ends, even if not our child."""
    return os.pidfd_open(pid)


def wait_pidfd(pidfd: int, timeout: float) -> bool:
    """Whether the process behind `pidfd` ended within `timeout` seconds (no polling loop: poll(2) waits)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def kill_if_alive(pidfd: int) -> None:
    """SIGKILL the process behind `pidfd` (by that exact process, never by name) if it still runs."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


async def compact(endpoint: str, revision: int, tls: EtcdTlsFiles | None = None) -> None:
    """Compact etcd's history up to `revision` (the daemon never compacts by hand, so Store has no call)."""
    client = (
        Etcd3Client([endpoint])
        if tls is None
        else Etcd3Client(
            [endpoint],
            ca_cert=tls.ca_file.read_bytes(),
            cert_key=tls.key_file.read_bytes(),
            cert_chain=tls.cert_file.read_bytes(),
        )
    )
    async with client:
        assert client.kv is not None
        await client.kv.compact(revision, physical=True, timeout=5)


async def etcd_metric(endpoint: str, series: str, tls: EtcdTlsFiles | None = None) -> int:
    """The value of the first line of etcd's /metrics (client port; HTTPS with `tls`) that starts with `series`."""
    host, port = endpoint.rsplit(":", 1)
    context = tls.ssl_context() if tls is not None else None
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        writer.write(f"GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n".encode())
        body = (await reader.read()).decode()
    finally:
        writer.close()
        await writer.wait_closed()
    for line in body.splitlines():
        if line.startswith(series):
            return int(float(line.split()[-1]))
    raise AssertionError(f"etcd /metrics has no {series}")


async def watcher_streams(endpoint: str, tls: EtcdTlsFiles | None = None) -> int:
    """How many watch streams etcd has open."""
    return await etcd_metric(endpoint, "etcd_debugging_mvcc_watch_stream_total ", tls)


def write_test_pki(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.

    Keys: ca, server_cert, server_key, client_cert, client_key.
    """
    ca, _ = pki.create_ca(directory, cluster="test", days=1)
    server_cert, server_key = pki.issue(directory, "server", role="node", hosts=["localhost", "127.0.0.1"], days=1)
    client_cert, client_key = pki.issue(directory, "client", role="user", days=1)
    return {
        "ca": ca,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


def write_expired_certificate(ca_dir: Path, name: str, role: str = "user") -> None:
    """`ca_dir/NAME.pem` and `NAME-key.pem`: signed by the CA there, expired yesterday (`pki.issue` will not)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = pki.load_certificate((ca_dir / pki.CA_CERT_FILE).read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / pki.CA_KEY_FILE).read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    spiffe = pki.SpiffeId(pki.trust_domain(ca), role, name).uri()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=3))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = pki.leaf_paths(ca_dir, name)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pki.write_secret(key_path, private)

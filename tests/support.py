"""Test helpers: free ports, waiting for a process to end, etcd chores the Store API lacks, a test PKI."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import select
import signal
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from etcd3aio import Etcd3Client


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


async def compact(endpoint: str, revision: int) -> None:
    """Compact etcd's history up to `revision` (the daemon never compacts by hand, so Store has no call)."""
    async with Etcd3Client([endpoint]) as client:
        assert client.kv is not None
        await client.kv.compact(revision, physical=True, timeout=5)


async def etcd_metric(endpoint: str, series: str) -> int:
    """The value of the first line of etcd's /metrics (client port) that starts with `series`."""
    host, port = endpoint.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
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


async def watcher_streams(endpoint: str) -> int:
    """How many watch streams etcd has open."""
    return await etcd_metric(endpoint, "etcd_debugging_mvcc_watch_stream_total ")


def write_test_pki(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.

    Keys: ca, server_cert, server_key, client_cert, client_key.
    """
    now = datetime.datetime.now(datetime.UTC)
    directory.mkdir(parents=True, exist_ok=True)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        issue("vgpu test CA", ca_key, "vgpu test CA")
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, _ = write("ca", ca_key, ca_cert)
    paths = {"ca": ca_path}
    for stem, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            issue(stem, key, "vgpu test CA")
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        paths[f"{stem}_cert"], paths[f"{stem}_key"] = write(stem, key, cert)
    return paths

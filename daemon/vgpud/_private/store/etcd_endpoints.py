"""Turning configured etcd endpoints and TLS files into what the etcd client needs.

Host names are resolved here (without blocking the event loop) to IPv4 `IP:port` addresses, one gRPC
channel each. Every address keeps the host name it was configured with: its member's TLS certificate is
checked against that name, so members may carry certificates for their own names only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vgpud._private.store.base import StoreError, StoreUnavailableError


@dataclass(frozen=True, slots=True)
class EtcdAddress:
    """One place to dial: an IPv4 `IP:port`, and the name its TLS certificate must carry (host as configured)."""

    address: str
    server_name: str


@dataclass(frozen=True, slots=True)
class EtcdTarget:
    """Where to dial (each address once, in the configured order) and whether to use TLS."""

    addresses: list[EtcdAddress]
    tls: bool


def parse_endpoint(raw: str) -> tuple[str, int, str]:
    """(host, port, scheme) from host:port, http://host:port or https://host:port (scheme "" when absent)."""
    text, scheme = raw.strip(), ""
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise StoreError(f"etcd endpoint {raw!r}: use http:// or https://, not {scheme}://")
    text = text.rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:  # noqa: PLR2004 -- port range
        raise StoreError(f"etcd endpoint {raw!r} is not host:port (etcd's client port is usually 2379)")
    try:
        version: int = ipaddress.ip_address(host).version
    except ValueError:
        version = 0  # a host name
    if version == 6:  # noqa: PLR2004 -- IP version
        raise StoreError(f"etcd endpoint {raw!r}: IPv6 addresses are not supported; use IPv4 or a host name")
    return host, int(port_text), scheme


async def resolve_endpoints(endpoints: Sequence[str], *, tls_files: bool) -> EtcdTarget:
    """Parse and resolve `endpoints`; TLS when they say https:// or TLS files were given."""
    parsed = [parse_endpoint(e) for e in endpoints]
    if not parsed:
        raise StoreError("no etcd endpoints given")
    schemes = {scheme for _, _, scheme in parsed if scheme}
    if len(schemes) > 1:
        raise StoreError(f"etcd endpoints mix http:// and https://: {', '.join(endpoints)}")
    if "http" in schemes and tls_files:
        raise StoreError("etcd TLS files were given but the endpoints say http://; use https://")
    loop = asyncio.get_running_loop()
    addresses: dict[str, EtcdAddress] = {}
    for host, port, _ in parsed:
        try:
            infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot resolve etcd host {host!r}: {exc}") from None
        for info in infos:
            address = f"{info[4][0]}:{port}"
            addresses.setdefault(address, EtcdAddress(address, server_name=host))
    return EtcdTarget(list(addresses.values()), tls="https" in schemes or tls_files)


def read_tls_files(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> tuple[bytes, bytes | None, bytes | None]:
    """CA, client key and client certificate bytes; no CA file: the system bundle. Blocking: use a thread."""
    if (cert_file is None) != (key_file is None):
        raise StoreError("etcd client TLS needs both a certificate file and a key file, or neither")
    if ca_file is None:
        default = ssl.get_default_verify_paths().cafile
        if default is None:
            raise StoreError("etcd over https needs a CA file: no system CA bundle was found")
        ca_file = Path(default)

    def read(path: Path | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read the etcd {what} file {path}: {exc.strerror or exc}") from None

    ca = read(ca_file, "CA")
    assert ca is not None
    return ca, read(key_file, "client key"), read(cert_file, "client certificate")

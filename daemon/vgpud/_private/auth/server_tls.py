"""vgpud's TCP door: mutual TLS with certificate files re-read on SIGHUP, and who each client certificate is.

The handshake (BoringSSL) refuses certificates from an untrusted CA and expired ones before any RPC; the
checks here add what TLS does not know: the SPIFFE identity and its cluster, and, for connections opened
before a SIGHUP changed the client CA, whether the certificate is still issued by the CA trusted *now* (so a
CA change revokes old certificates at their next call, without dropping anyone's lease).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vgpu._private import reasons
from vgpu._private.pki import PkiError, identity_of, issued_by, load_certificate
from vgpud._private.auth.identity import Identity, Role
from vgpud._private.refusal import Refusal

log = structlog.get_logger("vgpud.auth")

_CACHE_ENTRIES: Final = 1024
_MAX_FILE_BYTES: Final = 1 << 20


class TlsFilesError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file and what to change."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One consistent read of the three files."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes
    client_ca_certs: tuple[x509.Certificate, ...]
    not_after: dt.datetime
    """When the server certificate expires."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()[:_MAX_FILE_BYTES]
    except OSError as exc:
        raise TlsFilesError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise TlsFilesError(f"the {what} {path} is empty")
    return data


def load_material(cert_file: Path, key_file: Path, client_ca_file: Path) -> TlsMaterial:
    """Read and check the server certificate, its key and the client CA bundle; TlsFilesError says what is wrong."""
    chain, key_pem, ca_pem = _read(cert_file, "certificate"), _read(key_file, "key"), _read(client_ca_file, "client CA")
    mode = key_file.stat().st_mode & 0o777
    if mode & 0o077:
        raise TlsFilesError(f"the key {key_file} is readable by others (mode {mode:o}): chmod 600 it")
    try:
        cert = load_certificate(chain)
    except PkiError as exc:
        raise TlsFilesError(f"{cert_file}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsFilesError(f"{key_file}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise TlsFilesError(f"{key_file}: use an ECDSA P-256 key (vgpuctl pki issue makes one)")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise TlsFilesError(f"{key_file} is not the key of {cert_file}")
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        raise TlsFilesError(f"{cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d}: issue a new one")
    cas = tuple(x509.load_pem_x509_certificates(ca_pem)) if b"BEGIN CERTIFICATE" in ca_pem else ()
    if not cas:
        raise TlsFilesError(f"{client_ca_file} holds no PEM certificate")
    return TlsMaterial(chain, key_pem, ca_pem, cas, cert.not_valid_after_utc)


class ServerTls:
    """The TCP listener's credentials, swapped on reload; client certificates checked against the CA of now."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path, cluster: str) -> None:
        self._files = (cert_file, key_file, client_ca_file)
        self._cluster = cluster
        self._lock = threading.Lock()
        self._material = load_material(*self._files)
        self._pending: TlsMaterial | None = None
        self.generation = 0
        """Bumped by each successful reload: cached certificate checks of older generations are redone."""
        self._checked: OrderedDict[bytes, tuple[int, Identity | Refusal, dt.datetime]] = OrderedDict()

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that ask the fetcher for new material on every new connection."""
        return grpc.dynamic_ssl_server_credentials(
            self._config(self._material),
            self._fetch,  # type: ignore[arg-type]  # grpc's stub misses that the fetcher may return None (no change)
            require_client_authentication=True,
        )

    @staticmethod
    def _config(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.private_key, material.cert_chain)], root_certificates=material.client_ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC's own threads before each handshake: the new material once after a reload."""
        with self._lock:
            pending, self._pending = self._pending, None
        return self._config(pending) if pending is not None else None

    def reload(self) -> str:
        """Re-read the files (SIGHUP); on a bad file keep serving with the old ones. Returns what happened."""
        try:
            material = load_material(*self._files)
        except TlsFilesError as exc:
            log.error(  # noqa: TRY400 -- an operator mistake, not a bug: no traceback
                "TLS files not reloaded; still serving the previous ones", error=str(exc)
            )
            return f"kept the previous TLS files: {exc}"
        with self._lock:
            self._material = material
            self._pending = material
            self.generation += 1
            self._checked.clear()
        log.info("TLS files reloaded", certificate_expires=material.not_after.isoformat())
        return "reloaded"

    def identity(self, pem: bytes, peer: str, now: dt.datetime | None = None) -> Identity:
        """Who presented certificate `pem` (already verified by the handshake); Refusal when not acceptable."""
        when = now or dt.datetime.now(dt.UTC)
        with self._lock:
            cached = self._checked.get(pem)
            generation, cas = self.generation, self._material.client_ca_certs
        if cached is None or cached[0] != generation:
            verdict, not_after = self._check(pem, cas)
            cached = (generation, verdict, not_after)
            with self._lock:
                if generation == self.generation:
                    self._checked[pem] = cached
                    if len(self._checked) > _CACHE_ENTRIES:
                        self._checked.popitem(last=False)
        _, verdict, not_after = cached
        if isinstance(verdict, Refusal):
            raise verdict
        if when > not_after:
            raise Refusal(
                reasons.CERTIFICATE_EXPIRED,
                f"your client certificate ({verdict.spiffe_id}) expired on {not_after:%Y-%m-%d %H:%M} UTC: "
                "ask for a new one (vgpuctl pki issue)",
            )
        return Identity(
            role=verdict.role, name=verdict.name, groups=verdict.groups, spiffe_id=verdict.spiffe_id, peer=peer
        )

    def _check(self, pem: bytes, cas: tuple[x509.Certificate, ...]) -> tuple[Identity | Refusal, dt.datetime]:
        epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
        try:
            cert = load_certificate(pem)
            found = identity_of(cert)
        except PkiError as exc:
            return Refusal(reasons.CERTIFICATE_INVALID, f"your client certificate has no usable identity: {exc}"), epoch
        spiffe = found.spiffe
        if not any(issued_by(cert, ca) for ca in cas):
            return Refusal(
                reasons.CERTIFICATE_UNTRUSTED,
                f"your client certificate ({spiffe.uri()}) was not issued by the CA this vgpud trusts now "
                "(the pool's CA was changed): ask an admin for a certificate from the current CA",
            ), epoch
        if spiffe.cluster != self._cluster:
            return Refusal(
                reasons.WRONG_CLUSTER,
                f"your client certificate is for cluster {spiffe.cluster!r}, this vgpud serves {self._cluster!r}",
            ), epoch
        identity = Identity(
            role=Role(spiffe.role), name=spiffe.name, groups=frozenset(found.groups), spiffe_id=spiffe.uri()
        )
        return identity, found.not_after

"""The pool's PKI: a CA per cluster, certificates whose SPIFFE-style URI SAN says who holds them, and reading back.

Shared by vgpud (server certificates, peers' identities), vgpuctl (`vgpuctl pki init|issue`) and the SDK. An
identity is `spiffe://<cluster>/<role>/<name>`; the CA carries `spiffe://<cluster>` (the trust domain), so a
certificate issued from it names the same cluster. Groups ride in the subject's O= attributes, as Kubernetes
does. Keys are ECDSA P-256 (gRPC's TLS stack refuses Ed25519), PKCS8 PEM, written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vgpu._private.secret_files import PUBLIC_MODE, private_dir, write_atomically, write_secret

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "MAX_DAYS",
    "ROLES",
    "CertificateIdentity",
    "PkiError",
    "SpiffeId",
    "create_ca",
    "identity_of",
    "issue",
    "issued_by",
    "leaf_paths",
    "load_certificate",
    "parse_spiffe_id",
    "trust_domain",
    "write_secret",
]

ROLES: Final = ("user", "admin", "node")
CA_CERT_FILE: Final = "ca.pem"
CA_KEY_FILE: Final = "ca-key.pem"
MAX_DAYS: Final = 36500
SCHEME: Final = "spiffe://"

_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,63}")
_DNS_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PEM_CERT_RE: Final = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_BACKDATE: Final = dt.timedelta(minutes=5)  # hosts whose clocks run a little behind accept a fresh certificate


class PkiError(ValueError):
    """A certificate, key, name or PKI directory is not what it must be; the message says what to change."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """Who a certificate speaks for: a user, admin or node of one cluster."""

    cluster: str
    role: str
    name: str

    def uri(self) -> str:
        """`spiffe://<cluster>/<role>/<name>`, as it stands in the certificate."""
        return f"{SCHEME}{self.cluster}/{self.role}/{self.name}"


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """What a certificate says about its holder, read once so authorization needs no X.509 parsing."""

    spiffe: SpiffeId
    groups: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    fingerprint: str

    def valid_at(self, when: dt.datetime) -> bool:
        """Whether `when` (tz-aware) lies within the certificate's validity."""
        return self.not_before <= when <= self.not_after


def check_name(value: str, what: str) -> str:
    """`value` when it is 1-63 of [A-Za-z0-9._-] and not only dots; else a PkiError naming `what`."""
    if not _NAME_RE.fullmatch(value) or set(value) == {"."}:
        raise PkiError(f"{what} {value!r} is not allowed: use 1 to 63 letters, digits, '.', '_' or '-' (not only dots)")
    return value


def check_days(days: int) -> int:
    """`days` when it is a validity the PKI issues (1..36500)."""
    if isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise PkiError(f"--days {days} is out of range: give 1 to {MAX_DAYS}")
    return days


def parse_spiffe_id(uri: str) -> SpiffeId:
    """The identity in `spiffe://<cluster>/<role>/<name>`; PkiError for any other form."""
    if not uri.startswith(SCHEME):
        raise PkiError(f"identity {uri!r} is not a {SCHEME}<cluster>/<role>/<name> URI")
    parts = uri[len(SCHEME) :].split("/")
    if len(parts) != len(("cluster", "role", "name")):
        raise PkiError(f"identity {uri!r} must be exactly {SCHEME}<cluster>/<role>/<name>")
    cluster, role, name = parts
    if role not in ROLES:
        raise PkiError(f"identity {uri!r} has role {role!r}: the roles are {', '.join(ROLES)}")
    return SpiffeId(check_name(cluster, "cluster"), role, check_name(name, "name"))


def load_certificate(data: bytes) -> x509.Certificate:
    """The first PEM certificate in `data`."""
    match = _PEM_CERT_RE.search(data)
    if match is None:
        raise PkiError("no PEM certificate found (expected a -----BEGIN CERTIFICATE----- block)")
    try:
        return x509.load_pem_x509_certificate(match.group(0))
    except ValueError as exc:
        raise PkiError(f"the PEM certificate cannot be read: {exc}") from exc


def _spiffe_uris(cert: x509.Certificate) -> list[str]:
    """Every URI SAN whose scheme is spiffe (any case: a look-alike must not slip past the count)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.lower().startswith("spiffe:")]


def identity_of(cert: x509.Certificate) -> CertificateIdentity:
    """The identity in `cert`'s one spiffe:// URI SAN, its groups (O=), validity, serial and fingerprint."""
    uris = _spiffe_uris(cert)
    if len(uris) != 1:
        raise PkiError(f"the certificate has {len(uris)} spiffe:// URI SANs; an identity needs exactly one")
    spiffe = parse_spiffe_id(uris[0])
    groups: list[str] = []
    for attribute in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
        group = attribute.value if isinstance(attribute.value, str) else attribute.value.decode(errors="replace")
        groups.append(check_name(group, "group"))
    return CertificateIdentity(
        spiffe=spiffe,
        groups=tuple(groups),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def trust_domain(ca_cert: x509.Certificate) -> str:
    """The cluster a CA was made for: its `spiffe://<cluster>` URI SAN."""
    uris = _spiffe_uris(ca_cert)
    if len(uris) != 1 or not uris[0].startswith(SCHEME) or "/" in uris[0][len(SCHEME) :]:
        raise PkiError(
            "the CA certificate names no trust domain (one spiffe://<cluster> URI SAN); "
            "make the CA with `vgpuctl pki init DIR`"
        )
    return check_name(uris[0][len(SCHEME) :], "cluster")


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether `ca_cert`'s key signed `cert` (and names match); False on any mismatch."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def leaf_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """Where `issue` writes NAME's certificate and key: `DIR/NAME.pem`, `DIR/NAME-key.pem`."""
    return directory / f"{name}.pem", directory / f"{name}-key.pem"


def create_ca(directory: Path, *, cluster: str = "default", days: int = 3650, force: bool = False) -> tuple[Path, Path]:
    """A new CA for `cluster` in `directory` (created 0700 if missing): (ca.pem, ca-key.pem, written 0600)."""
    check_name(cluster, "cluster")
    check_days(days)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    _refuse_overwrite([cert_path, key_path], force=force, what="a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vgpu"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"vgpu CA {cluster}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"{SCHEME}{cluster}")]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert_path, key_path, cert, key)
    return cert_path, key_path


def issue(
    directory: Path,
    name: str,
    *,
    role: str,
    groups: Sequence[str] = (),
    hosts: Sequence[str] = (),
    days: int = 365,
    force: bool = False,
) -> tuple[Path, Path]:
    """A certificate for `name` in `role`, signed by DIR's CA: (DIR/NAME.pem, DIR/NAME-key.pem, key 0600).

    `hosts` become DNS or IP SANs and make the certificate good for serving as well; a node's always is.
    Its validity ends with the CA's at the latest.
    """
    check_name(name, "name")
    if name == "ca" or name.endswith("-key"):
        raise PkiError(f"name {name!r} would clash with the CA's or another certificate's files: choose another")
    if role not in ROLES:
        raise PkiError(f"role {role!r} is unknown: use one of {', '.join(ROLES)}")
    group_list = list(dict.fromkeys(check_name(group, "group") for group in groups))
    host_names = [_host_name(host) for host in hosts]
    check_days(days)
    ca_cert, ca_key = _load_ca(directory)
    cluster = trust_domain(ca_cert)
    cert_path, key_path = leaf_paths(directory, name)
    _refuse_overwrite([cert_path, key_path], force=force, what=f"a certificate for {name!r}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in group_list]
        + [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    serves = role == "node" or bool(host_names)
    usages = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if serves
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(SpiffeId(cluster, role, name).uri()), *host_names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(cert_path, key_path, cert, key)
    return cert_path, key_path


def _host_name(host: str) -> x509.GeneralName:
    """An IP address or DNS name SAN for `host`."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):  # noqa: PLR2004 -- RFC 1035
        raise PkiError(f"--host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.removesuffix(".").lower())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public_key(ca_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ec_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PkiError("the CA certificate's key is not an ECDSA key; make the CA with `vgpuctl pki init DIR`")
    return key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """DIR's CA certificate and key, checked to belong together."""
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    try:
        cert_data, key_data = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError as exc:
        raise PkiError(f"{exc.filename} does not exist: run `vgpuctl pki init {directory}` first") from None
    except OSError as exc:
        raise PkiError(f"cannot read the CA in {directory}: {exc.strerror or exc}") from None
    cert = load_certificate(cert_data)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != _ec_public_key(cert):
        raise PkiError(f"{key_path} is not the key of {cert_path}: restore the pair, or make a new CA with --force")
    return cert, key


def _refuse_overwrite(paths: Sequence[Path], *, force: bool, what: str) -> None:
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise PkiError(f"{path} exists already ({what}): give --force to replace it")


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    """Key first (0600), then the certificate (0644): a certificate on disk always has its key beside it."""
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        private_dir(cert_path.parent)
        write_secret(key_path, pkcs8)
        write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    except OSError as exc:
        raise PkiError(f"cannot write {exc.filename or cert_path.parent}: {exc.strerror or exc}") from None

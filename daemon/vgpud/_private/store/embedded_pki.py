"""The embedded etcd's private PKI: only a holder of vgpud's client key may read or write the pool's etcd.

At first start vgpud makes a CA under `<etcd data dir>/pki/` (0700, keys 0600), a server certificate for
etcd (127.0.0.1 and localhost; client auth as well, since etcd's JSON gateway dials its own gRPC port with
it) and a client certificate for vgpud. Later starts reuse them; a leaf that is unreadable, not from the CA,
expired or within `RENEW_BEFORE` of expiry is issued again (the CA too, and then every leaf).
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypedDict

from cryptography import x509

from vgpu._private import pki
from vgpu._private.secret_files import PRIVATE_DIR_MODE, SECRET_MODE, private_dir

TRUST_DOMAIN: Final = "vgpud-embedded-etcd"
SERVER_NAME: Final = "etcd-server"
CLIENT_NAME: Final = "vgpud"
SERVER_HOSTS: Final = ("127.0.0.1", "localhost")
RENEW_BEFORE: Final = dt.timedelta(days=30)
_CA_DAYS: Final = 3650
_LEAF_DAYS: Final = 365


class StoreTlsArgs(TypedDict):
    """The TLS keyword arguments of `EtcdStore.connect`."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class EtcdTlsFiles:
    """A client's view of a TLS etcd: the CA that signed etcd's certificate, and a client certificate + key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def store_args(self) -> StoreTlsArgs:
        """`EtcdStore.connect(endpoints, **files.store_args())`."""
        return StoreTlsArgs(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)

    def vgpud_flags(self) -> list[str]:
        """The vgpud flags that hand these files to a daemon (`--etcd-ca ... --etcd-cert ... --etcd-key ...`)."""
        return ["--etcd-ca", str(self.ca_file), "--etcd-cert", str(self.cert_file), "--etcd-key", str(self.key_file)]

    def ssl_context(self) -> ssl.SSLContext:
        """A client context for etcd's HTTPS endpoints (/health): etcd's CA, this client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True, slots=True)
class EmbeddedPki:
    """Where the embedded etcd's certificates lie: its server pair, and vgpud's client files."""

    server_cert: Path
    server_key: Path
    client: EtcdTlsFiles


def client_files(directory: Path) -> EtcdTlsFiles:
    """The daemon's client files in the PKI `directory` (whether or not they exist yet)."""
    cert, key = pki.leaf_paths(directory, CLIENT_NAME)
    return EtcdTlsFiles(ca_file=directory / pki.CA_CERT_FILE, cert_file=cert, key_file=key)


def ensure_pki(directory: Path, *, now: dt.datetime | None = None) -> EmbeddedPki:
    """The PKI in `directory`, made or renewed as needed (blocking file and crypto work).

    Raises PkiError (a ValueError) or OSError when it cannot be written.
    """
    when = now if now is not None else dt.datetime.now(dt.UTC)
    private_dir(directory).chmod(PRIVATE_DIR_MODE)  # nobody else may even list it
    ca_file = directory / pki.CA_CERT_FILE
    ca = _current(ca_file, when, ca=None)
    if ca is None:
        pki.create_ca(directory, cluster=TRUST_DOMAIN, days=_CA_DAYS, force=True)
        ca = pki.load_certificate(ca_file.read_bytes())
    server_cert, server_key = pki.leaf_paths(directory, SERVER_NAME)
    if _current(server_cert, when, ca=ca) is None:
        pki.issue(directory, SERVER_NAME, role="node", hosts=SERVER_HOSTS, days=_LEAF_DAYS, force=True)
    client = client_files(directory)
    if _current(client.cert_file, when, ca=ca) is None:
        pki.issue(directory, CLIENT_NAME, role="node", days=_LEAF_DAYS, force=True)
    for key in (directory / pki.CA_KEY_FILE, server_key, client.key_file):
        key.chmod(SECRET_MODE)  # in case someone loosened them: etcd's and vgpud's keys are nobody else's
    return EmbeddedPki(server_cert=server_cert, server_key=server_key, client=client)


def _current(path: Path, when: dt.datetime, *, ca: x509.Certificate | None) -> x509.Certificate | None:
    """The certificate at `path` while it is usable beyond `RENEW_BEFORE` (and, for a leaf, from `ca`)."""
    try:
        cert = pki.load_certificate(path.read_bytes())
        key_file = path.with_name(path.name.removesuffix(".pem") + "-key.pem")
        if not key_file.is_file():
            return None
    except (OSError, pki.PkiError):
        return None
    if not cert.not_valid_before_utc <= when or cert.not_valid_after_utc - when < RENEW_BEFORE:
        return None
    if ca is not None and not pki.issued_by(cert, ca):
        return None
    return cert

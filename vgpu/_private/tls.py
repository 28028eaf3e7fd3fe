"""Mutual TLS for clients of a remote vgpud: which files, the channel credentials, what a failure means.

A failed handshake reaches the client as BoringSSL's alert names, which are not something to show a user
as they are: `diagnose` turns them (and the client's own certificate) into a reason and a sentence.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from vgpu._private import reasons
from vgpu._private.errors import InvalidRequestError

ENV_CERT: Final = "VGPU_TLS_CERT"
ENV_KEY: Final = "VGPU_TLS_KEY"
ENV_CA: Final = "VGPU_TLS_CA"
_MAX_FILE: Final = 1 << 20

# What the daemon's TLS alert says about our certificate (the handshake failed before any RPC could answer).
_ALERTS: Final = (
    (
        "CERTIFICATE_EXPIRED",
        reasons.CERTIFICATE_EXPIRED,
        "vgpud refused your client certificate as expired: ask for a new one (vgpuctl pki issue)",
    ),
    (
        "UNKNOWN_CA",
        reasons.CERTIFICATE_UNTRUSTED,
        "vgpud does not trust the CA that issued your client certificate (another pool's CA, or the pool's CA was "
        "changed): ask an admin for a certificate from the pool's CA",
    ),
    (
        "CERTIFICATE_REQUIRED",
        reasons.CERTIFICATE_INVALID,
        "vgpud needs a client certificate: pass --tls-cert/--tls-key or set VGPU_TLS_CERT",
    ),
    (
        "BAD_CERTIFICATE",
        reasons.CERTIFICATE_INVALID,
        "vgpud refused your client certificate as malformed or not for client use",
    ),
    (
        "SOCKET CLOSED",
        reasons.CERTIFICATE_UNTRUSTED,
        "vgpud closed the connection during the TLS handshake: most likely it does not trust your client "
        "certificate (issued by another CA, or the pool's CA was changed): ask an admin for one from the pool's CA",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        reasons.CERTIFICATE_UNTRUSTED,
        "vgpud's server certificate is not trusted by your CA file, or does not name the host you dialled "
        "(issue it with --host for that name or address)",
    ),
)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Files for mutual TLS to a vgpud over TCP: this client's certificate and key, and the pool's CA.

    `server_name` overrides the name checked against the daemon's certificate (default: the dialled host).
    """

    cert: Path
    key: Path
    ca: Path
    server_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            value = getattr(self, name)
            if not isinstance(value, str | Path) or not str(value):
                raise InvalidRequestError(f"TlsConfig.{name} must be a file path, got {value!r}")
            object.__setattr__(self, name, Path(value))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TlsConfig | None:
        """The config from VGPU_TLS_CERT, VGPU_TLS_KEY and VGPU_TLS_CA; None when none is set."""
        env = os.environ if environ is None else environ
        values = [env.get(name, "") for name in (ENV_CERT, ENV_KEY, ENV_CA)]
        if not any(values):
            return None
        missing = [name for name, value in zip((ENV_CERT, ENV_KEY, ENV_CA), values, strict=True) if not value]
        if missing:
            raise InvalidRequestError(f"set {', '.join(missing)} too: mutual TLS needs a certificate, its key and a CA")
        return cls(Path(values[0]), Path(values[1]), Path(values[2]))

    def _read(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()[:_MAX_FILE]
        except OSError as exc:
            raise InvalidRequestError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """GRPC channel credentials from the files (read now: a renewed certificate needs a new Pool)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca, "CA"),
            private_key=self._read(self.key, "key"),
            certificate_chain=self._read(self.cert, "certificate"),
        )

    def diagnose(self, details: str) -> tuple[str, str] | None:
        """(reason, meaning in words) of a failed connection's details for this client; None if not TLS."""
        own = self._own_certificate_problem()
        if own is not None:
            return own
        upper = details.upper()
        for alert, reason, meaning in _ALERTS:
            if alert in upper:
                return reason, meaning
        if "SSL" in upper or "HANDSHAKE" in upper or "TLS" in upper:
            return (
                reasons.CERTIFICATE_UNTRUSTED,
                "the TLS handshake with vgpud failed: check the certificate, key and CA files",
            )
        return None

    def _own_certificate_problem(self) -> tuple[str, str] | None:
        from vgpu._private.pki import PkiError, issued_by, load_certificate  # noqa: PLC0415 -- only on failures

        try:
            cert = load_certificate(self._read(self.cert, "certificate"))
            ca = load_certificate(self._read(self.ca, "CA"))
        except (PkiError, InvalidRequestError) as exc:
            return reasons.CERTIFICATE_INVALID, str(exc)
        now = dt.datetime.now(dt.UTC)
        if cert.not_valid_after_utc <= now:
            expired = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            return (
                reasons.CERTIFICATE_EXPIRED,
                f"your client certificate {self.cert} expired on {expired}: issue a new one",
            )
        if cert.not_valid_before_utc > now:
            start = f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            return reasons.CERTIFICATE_INVALID, f"your client certificate {self.cert} is not valid before {start}"
        if not issued_by(cert, ca):
            return (
                reasons.CERTIFICATE_UNTRUSTED,
                f"your client certificate {self.cert} was not issued by the CA in {self.ca}: use the pool's CA",
            )
        return None

"""The SDK's side of mutual TLS: which files from where, and what a failed handshake means in words."""

from __future__ import annotations

from pathlib import Path

import pytest

import vgpu
from tests.support import write_expired_certificate
from vgpu._private import pki, reasons
from vgpu._private.channels import tls_for
from vgpu._private.tls import TlsConfig


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    pki.create_ca(tmp_path)
    pki.issue(tmp_path, "alice", role="user")
    return tmp_path


def test_tls_files_come_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch, pki_dir: Path) -> None:
    mine = TlsConfig(pki_dir / "alice.pem", pki_dir / "alice-key.pem", pki_dir / "ca.pem")
    assert tls_for("unix:///run/vgpu/vgpud.sock", mine) is None  # the Unix socket has no TLS
    assert tls_for("gpu-07:7070", mine) is mine
    for name in ("VGPU_TLS_CERT", "VGPU_TLS_KEY", "VGPU_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(vgpu.InvalidRequestError, match="vgpud serves TCP only with mutual TLS"):
        tls_for("gpu-07:7070", None)
    monkeypatch.setenv("VGPU_TLS_CERT", str(pki_dir / "alice.pem"))
    with pytest.raises(vgpu.InvalidRequestError, match="set VGPU_TLS_KEY, VGPU_TLS_CA too"):
        tls_for("gpu-07:7070", None)
    monkeypatch.setenv("VGPU_TLS_KEY", str(pki_dir / "alice-key.pem"))
    monkeypatch.setenv("VGPU_TLS_CA", str(pki_dir / "ca.pem"))
    assert tls_for("gpu-07:7070", None) == mine
    with pytest.raises(vgpu.InvalidRequestError, match="cannot read the TLS key"):
        TlsConfig(pki_dir / "alice.pem", pki_dir / "missing.pem", pki_dir / "ca.pem").channel_credentials()
    with pytest.raises(vgpu.InvalidRequestError, match=r"TlsConfig.cert must be a file path"):
        TlsConfig("", pki_dir / "a", pki_dir / "b")  # type: ignore[arg-type]


def test_a_failed_handshake_is_explained(pki_dir: Path, tmp_path: Path) -> None:
    good = TlsConfig(pki_dir / "alice.pem", pki_dir / "alice-key.pem", pki_dir / "ca.pem")
    assert good.diagnose("failed to connect to all addresses; last error: UNKNOWN: Connection refused") is None
    alert = "Ssl handshake failed: SSL_ERROR_SSL: error:10000418:SSL routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA"
    assert good.diagnose(alert) == (
        reasons.CERTIFICATE_UNTRUSTED,
        "vgpud does not trust the CA that issued your client certificate (another pool's CA, or the pool's CA "
        "was changed): ask an admin for a certificate from the pool's CA",
    )
    assert good.diagnose("ipv4:127.0.0.1:7070: Socket closed")[0] == reasons.CERTIFICATE_UNTRUSTED  # type: ignore[index]
    expired = good.diagnose("TLSV1_ALERT_CERTIFICATE_EXPIRED")
    assert expired is not None
    assert expired[0] == reasons.CERTIFICATE_EXPIRED
    write_expired_certificate(pki_dir, "late")
    late = TlsConfig(pki_dir / "late.pem", pki_dir / "late-key.pem", pki_dir / "ca.pem").diagnose("Socket closed")
    assert late is not None
    assert late[0] == reasons.CERTIFICATE_EXPIRED
    assert "late.pem expired on" in late[1]
    other = tmp_path / "other"
    pki.create_ca(other)
    foreign = TlsConfig(pki_dir / "alice.pem", pki_dir / "alice-key.pem", other / "ca.pem").diagnose("Socket closed")
    assert foreign is not None
    assert foreign[0] == reasons.CERTIFICATE_UNTRUSTED
    assert "was not issued by the CA in" in foreign[1]

"""The embedded etcd's private PKI: made once, reused, renewed before it lapses, never readable by others."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from vgpu._private import pki
from vgpud._private.store import embedded_pki
from vgpud._private.store.embedded_pki import ensure_pki


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def identity(path: Path) -> pki.CertificateIdentity:
    return pki.identity_of(pki.load_certificate(path.read_bytes()))


def test_first_start_makes_a_ca_a_server_and_a_client_certificate(tmp_path: Path) -> None:
    made = ensure_pki(tmp_path / "pki")
    directory = tmp_path / "pki"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(files(directory)) == [
        "ca-key.pem",
        "ca.pem",
        "etcd-server-key.pem",
        "etcd-server.pem",
        "vgpud-key.pem",
        "vgpud.pem",
    ]
    for key in ("ca-key.pem", "etcd-server-key.pem", "vgpud-key.pem"):
        assert stat.S_IMODE((directory / key).stat().st_mode) == 0o600
    ca = pki.load_certificate(made.client.ca_file.read_bytes())
    assert pki.trust_domain(ca) == embedded_pki.TRUST_DOMAIN
    for cert in (made.server_cert, made.client.cert_file):
        assert pki.issued_by(pki.load_certificate(cert.read_bytes()), ca)
    assert identity(made.client.cert_file).spiffe.name == "vgpud"  # the CN etcd would take as its user
    assert made.client.vgpud_flags() == [
        "--etcd-ca",
        str(directory / "ca.pem"),
        "--etcd-cert",
        str(directory / "vgpud.pem"),
        "--etcd-key",
        str(directory / "vgpud-key.pem"),
    ]


def test_a_restart_reuses_everything_and_tightens_loosened_keys(tmp_path: Path) -> None:
    ensure_pki(tmp_path)
    before = files(tmp_path)
    (tmp_path / "vgpud-key.pem").chmod(0o644)
    ensure_pki(tmp_path)
    assert files(tmp_path) == before
    assert stat.S_IMODE((tmp_path / "vgpud-key.pem").stat().st_mode) == 0o600


def test_leaves_are_renewed_within_30_days_of_expiry_from_the_same_ca(tmp_path: Path) -> None:
    ensure_pki(tmp_path)
    before = files(tmp_path)
    now = dt.datetime.now(dt.UTC)
    ensure_pki(tmp_path, now=now + dt.timedelta(days=300))  # 65 days left: kept
    assert files(tmp_path) == before
    ensure_pki(tmp_path, now=now + dt.timedelta(days=340))  # 25 days left: renewed
    after = files(tmp_path)
    assert after["ca.pem"] == before["ca.pem"]
    assert after["vgpud.pem"] != before["vgpud.pem"]
    assert after["etcd-server.pem"] != before["etcd-server.pem"]


def test_an_expiring_ca_is_replaced_with_every_leaf(tmp_path: Path) -> None:
    ensure_pki(tmp_path)
    before = files(tmp_path)
    ensure_pki(tmp_path, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=3640))
    after = files(tmp_path)
    assert all(after[name] != before[name] for name in before)


def test_a_missing_key_or_a_foreign_leaf_is_issued_again(tmp_path: Path) -> None:
    made = ensure_pki(tmp_path)
    made.server_key.unlink()
    ensure_pki(tmp_path)
    assert made.server_key.is_file()
    other = tmp_path / "other"
    pki.create_ca(other)
    cert, key = pki.issue(other, "vgpud", role="node")
    made.client.cert_file.write_bytes(cert.read_bytes())
    made.client.key_file.write_bytes(key.read_bytes())
    ensure_pki(tmp_path)
    ca = pki.load_certificate(made.client.ca_file.read_bytes())
    assert pki.issued_by(pki.load_certificate(made.client.cert_file.read_bytes()), ca)

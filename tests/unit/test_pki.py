"""vgpu's PKI: CA and certificates on disk, identities read back, and the certificates doing real mutual TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from vgpu._private import pki
from vgpu._private.pki import PkiError, SpiffeId


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read_cert(path: Path) -> x509.Certificate:
    return pki.load_certificate(path.read_bytes())


def ca_key(directory: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def hand_made(
    directory: Path,
    *,
    uris: list[str],
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    organization: Sequence[str] = (),
) -> x509.Certificate:
    """A leaf signed by DIR's CA with exactly the URI SANs and validity given (what `issue` would never make)."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    ca = read_cert(directory / "ca.pem")
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organization]
                + [x509.NameAttribute(NameOID.COMMON_NAME, "hand")]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    return builder.sign(ca_key(directory), hashes.SHA256())


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.create_ca(directory, cluster="prod")
    return directory


# -- SPIFFE ids ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", pki.ROLES)
def test_spiffe_id_round_trips(role: str) -> None:
    spiffe = SpiffeId("prod-1", role, "alice.b_c-d")
    assert spiffe.uri() == f"spiffe://prod-1/{role}/alice.b_c-d"
    assert pki.parse_spiffe_id(spiffe.uri()) == spiffe


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("https://prod/user/alice", "is not a spiffe://"),
        ("SPIFFE://prod/user/alice", "is not a spiffe://"),
        ("spiffe:/prod/user/alice", "is not a spiffe://"),
        ("spiffe://prod/root/alice", "role 'root'"),
        ("spiffe://prod/user/al ice", "name 'al ice'"),
        ("spiffe://prod/user/alice/extra", "exactly"),
        ("spiffe://prod/user", "exactly"),
        ("spiffe://prod", "exactly"),
        ("spiffe://prod/user/", "name ''"),
        ("spiffe://prod/user/..", "name '..'"),
        ("spiffe:///user/alice", "cluster ''"),
        ("spiffe://pr:od/user/alice", "cluster 'pr:od'"),
        ("spiffe://prod/user/alice?x=1", "name 'alice?x=1'"),
        ("spiffe://prod/user/" + "a" * 64, "name"),
    ],
)
def test_parse_spiffe_id_refuses_anything_else(uri: str, says: str) -> None:
    with pytest.raises(PkiError, match="(?i)" + says.replace("?", r"\?").replace(".", r"\.")):
        pki.parse_spiffe_id(uri)


# -- create_ca and issue ---------------------------------------------------------------------------------
def test_ca_names_its_cluster_and_is_a_ca(tmp_path: Path) -> None:
    cert_path, key_path = pki.create_ca(tmp_path / "new" / "pki", cluster="prod", days=10)
    assert (cert_path.name, key_path.name) == ("ca.pem", "ca-key.pem")
    ca = read_cert(cert_path)
    assert pki.trust_domain(ca) == "prod"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    assert ca.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=10, minutes=1)
    assert pki.issued_by(ca, ca)  # self-signed
    with pytest.raises(PkiError, match="must be exactly spiffe://<cluster>/<role>/<name>"):
        pki.identity_of(ca)  # a CA is no identity


def test_issued_certificate_carries_the_identity(pki_dir: Path) -> None:
    cert_path, key_path = pki.issue(pki_dir, "alice", role="user", groups=["vision", "nlp", "vision"], days=30)
    assert (cert_path, key_path) == (pki_dir / "alice.pem", pki_dir / "alice-key.pem")
    cert = read_cert(cert_path)
    identity = pki.identity_of(cert)
    assert identity.spiffe == SpiffeId("prod", "user", "alice")
    assert identity.groups == ("vision", "nlp")
    assert identity.serial == cert.serial_number
    assert identity.fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert len(identity.fingerprint) == 64
    now = dt.datetime.now(dt.UTC)
    assert identity.not_before.tzinfo is not None
    assert identity.not_after.utcoffset() == dt.timedelta(0)
    assert identity.not_before <= now <= identity.not_after
    assert dt.timedelta(days=29, hours=23) < identity.not_after - now <= dt.timedelta(days=30)
    assert identity.valid_at(now)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert pki.issued_by(cert, read_cert(pki_dir / "ca.pem"))
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


BOTH = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


@pytest.mark.parametrize(
    ("role", "hosts", "expected"),
    [
        ("user", [], {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("admin", [], {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("node", [], BOTH),
        ("admin", ["gw.example.org"], BOTH),
    ],
)
def test_only_nodes_and_certificates_with_hosts_serve(
    pki_dir: Path, role: str, hosts: list[str], expected: set[x509.ObjectIdentifier]
) -> None:
    cert_path, _ = pki.issue(pki_dir, "n", role=role, hosts=hosts)
    assert usages(read_cert(cert_path)) == expected


def test_hosts_become_ip_and_dns_names(pki_dir: Path) -> None:
    cert_path, _ = pki.issue(pki_dir, "gpu-07", role="node", hosts=["127.0.0.1", "::1", "Gpu-07.Example.org."])
    san = read_cert(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.DNSName) == ["gpu-07.example.org"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://prod/node/gpu-07"]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"name": "bad name"}, "name 'bad name'"),
        ({"name": "x" * 64}, "name"),
        ({"name": "..."}, "not only dots"),
        ({"name": "ca"}, "clash"),
        ({"name": "alice-key"}, "clash"),
        ({"role": "root"}, "role 'root' is unknown"),
        ({"groups": ["ok", "not/ok"]}, "group 'not/ok'"),
        ({"hosts": ["bad_host!"]}, "neither an IP address nor a DNS name"),
        ({"hosts": ["-lead.example"]}, "neither"),
        ({"days": 0}, "--days 0"),
        ({"days": 36501}, "--days 36501"),
    ],
)
def test_issue_refuses_bad_input_and_writes_nothing(pki_dir: Path, kwargs: dict[str, object], says: str) -> None:
    before = sorted(pki_dir.iterdir())
    args: dict[str, object] = {"name": "alice", "role": "user", **kwargs}
    name = args.pop("name")
    assert isinstance(name, str)
    with pytest.raises(PkiError, match=says.replace(".", r"\.")):
        pki.issue(pki_dir, name, **args)  # type: ignore[arg-type]
    assert sorted(pki_dir.iterdir()) == before


@pytest.mark.parametrize(("cluster", "days"), [("bad/cluster", 10), ("", 10), ("ok", 0), ("ok", 36501)])
def test_create_ca_refuses_bad_input(tmp_path: Path, cluster: str, days: int) -> None:
    with pytest.raises(PkiError):
        pki.create_ca(tmp_path / "pki", cluster=cluster, days=days)
    assert not (tmp_path / "pki").exists()


def test_issue_without_a_ca_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=f"run `vgpuctl pki init {tmp_path}` first"):
        pki.issue(tmp_path, "alice", role="user")


def test_issue_refuses_a_ca_key_that_is_not_the_certificates(tmp_path: Path, pki_dir: Path) -> None:
    pki.create_ca(tmp_path / "other")
    (pki_dir / "ca-key.pem").write_bytes((tmp_path / "other" / "ca-key.pem").read_bytes())
    with pytest.raises(PkiError, match="is not the key of"):
        pki.issue(pki_dir, "alice", role="user")


def test_refuses_to_overwrite_without_force(pki_dir: Path) -> None:
    ca_before = (pki_dir / "ca.pem").read_bytes()
    with pytest.raises(PkiError, match=r"ca\.pem exists already.*--force"):
        pki.create_ca(pki_dir, cluster="prod")
    assert (pki_dir / "ca.pem").read_bytes() == ca_before
    first, _ = pki.issue(pki_dir, "alice", role="user")
    issued = first.read_bytes()
    with pytest.raises(PkiError, match=r"alice\.pem exists already.*--force"):
        pki.issue(pki_dir, "alice", role="admin")
    assert first.read_bytes() == issued
    pki.issue(pki_dir, "alice", role="admin", force=True)
    assert pki.identity_of(read_cert(first)).spiffe.role == "admin"
    pki.create_ca(pki_dir, cluster="prod", force=True)
    assert (pki_dir / "ca.pem").read_bytes() != ca_before
    assert not pki.issued_by(read_cert(first), read_cert(pki_dir / "ca.pem"))


def test_modes_keys_0600_new_directory_0700_existing_directory_left_alone(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the widest umask: modes must not depend on it
    try:
        fresh = tmp_path / "a" / "fresh"
        pki.create_ca(fresh)
        pki.issue(fresh, "n", role="node")
        existing = tmp_path / "existing"
        existing.mkdir(mode=0o755)
        pki.create_ca(existing)
        pki.issue(existing, "n", role="node")
    finally:
        os.umask(old_umask)
    assert mode(fresh) == 0o700
    assert mode(existing) == 0o755
    for directory in (fresh, existing):
        assert mode(directory / "ca-key.pem") == 0o600
        assert mode(directory / "n-key.pem") == 0o600
        assert mode(directory / "ca.pem") == 0o644
        assert sorted(p.name for p in directory.iterdir()) == ["ca-key.pem", "ca.pem", "n-key.pem", "n.pem"]


def test_write_secret_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    target = tmp_path / "state" / "token"
    old_umask = os.umask(0)
    try:
        pki.write_secret(target, b"one")
        assert mode(target.parent) == 0o700
        target.chmod(0o644)
        pki.write_secret(target, b"two")  # replaces, with the mode reset
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"two"
    assert mode(target) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["token"]  # no temporary left behind


def test_write_secret_does_not_follow_a_planted_symlink_to_the_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "key.pem"
    link.symlink_to(victim)
    pki.write_secret(link, b"secret")
    assert victim.read_bytes() == b"keep"
    assert not link.is_symlink()
    assert link.read_bytes() == b"secret"


def test_leaf_ends_with_its_ca(tmp_path: Path) -> None:
    pki.create_ca(tmp_path, days=2)
    cert_path, _ = pki.issue(tmp_path, "alice", role="user", days=365)
    assert read_cert(cert_path).not_valid_after_utc == read_cert(tmp_path / "ca.pem").not_valid_after_utc


# -- reading certificates --------------------------------------------------------------------------------
def test_identity_needs_exactly_one_spiffe_uri(pki_dir: Path) -> None:
    two = hand_made(pki_dir, uris=["spiffe://prod/user/alice", "spiffe://prod/admin/alice"])
    with pytest.raises(PkiError, match="has 2 spiffe:// URI SANs"):
        pki.identity_of(two)
    look_alike = hand_made(pki_dir, uris=["spiffe://prod/user/alice", "SPIFFE://prod/admin/alice"])
    with pytest.raises(PkiError, match="has 2"):
        pki.identity_of(look_alike)
    with pytest.raises(PkiError, match="has 0"):
        pki.identity_of(hand_made(pki_dir, uris=[]))
    with pytest.raises(PkiError, match="has 0"):
        pki.identity_of(hand_made(pki_dir, uris=["https://prod/user/alice"]))
    with pytest.raises(PkiError, match="is not a spiffe://"):
        pki.identity_of(hand_made(pki_dir, uris=["Spiffe://prod/user/alice"]))
    with pytest.raises(PkiError, match="role 'root'"):
        pki.identity_of(hand_made(pki_dir, uris=["spiffe://prod/root/alice"]))
    other_uri = hand_made(pki_dir, uris=["spiffe://prod/node/n1", "https://example.org/n1"])
    assert pki.identity_of(other_uri).spiffe == SpiffeId("prod", "node", "n1")


def test_identity_refuses_a_group_with_bad_characters(pki_dir: Path) -> None:
    cert = hand_made(pki_dir, uris=["spiffe://prod/user/alice"], organization=["ok", "sys admins"])
    with pytest.raises(PkiError, match="group 'sys admins'"):
        pki.identity_of(cert)


def test_expired_certificate_reads_as_expired(pki_dir: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = hand_made(
        pki_dir,
        uris=["spiffe://prod/user/alice"],
        not_before=now - dt.timedelta(days=3),
        not_after=now - dt.timedelta(days=1),
    )
    identity = pki.identity_of(expired)
    assert identity.not_after < now
    assert not identity.valid_at(now)
    assert pki.issued_by(expired, read_cert(pki_dir / "ca.pem"))  # the signature is fine; the dates are not


def test_issued_by_tells_cas_apart_even_with_the_same_name(tmp_path: Path, pki_dir: Path) -> None:
    cert_path, _ = pki.issue(pki_dir, "alice", role="user")
    twin = tmp_path / "twin"
    pki.create_ca(twin, cluster="prod")  # same subject and cluster, another key
    cert = read_cert(cert_path)
    assert read_cert(twin / "ca.pem").subject == read_cert(pki_dir / "ca.pem").subject
    assert pki.issued_by(cert, read_cert(pki_dir / "ca.pem"))
    assert not pki.issued_by(cert, read_cert(twin / "ca.pem"))
    other = tmp_path / "other"
    pki.create_ca(other, cluster="staging")
    assert not pki.issued_by(cert, read_cert(other / "ca.pem"))
    assert pki.trust_domain(read_cert(other / "ca.pem")) == "staging"


def test_issue_takes_the_cluster_from_the_ca(tmp_path: Path) -> None:
    pki.create_ca(tmp_path, cluster="staging")
    cert_path, _ = pki.issue(tmp_path, "gpu-01", role="node")
    assert pki.identity_of(read_cert(cert_path)).spiffe.uri() == "spiffe://staging/node/gpu-01"


def test_trust_domain_needs_the_ca_uri(pki_dir: Path) -> None:
    leaf, _ = pki.issue(pki_dir, "alice", role="user")
    with pytest.raises(PkiError, match="names no trust domain"):
        pki.trust_domain(read_cert(leaf))
    with pytest.raises(PkiError, match="names no trust domain"):
        pki.trust_domain(hand_made(pki_dir, uris=[]))


def test_load_certificate_takes_the_first_pem_block(pki_dir: Path) -> None:
    leaf, _ = pki.issue(pki_dir, "alice", role="user")
    bundle = b"a comment\n" + leaf.read_bytes() + (pki_dir / "ca.pem").read_bytes()
    assert pki.load_certificate(bundle) == read_cert(leaf)
    with pytest.raises(PkiError, match="no PEM certificate"):
        pki.load_certificate(b"nothing here")
    with pytest.raises(PkiError, match="no PEM certificate"):
        pki.load_certificate((pki_dir / "ca-key.pem").read_bytes())
    with pytest.raises(PkiError, match="cannot be read"):
        pki.load_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# -- the certificates in real mutual TLS -----------------------------------------------------------------
@pytest.fixture
def tls_server(pki_dir: Path) -> Iterator[int]:
    """A gRPC health server on 127.0.0.1 serving node `gpu-01`'s certificate, client certificates required."""
    cert, key = pki.issue(pki_dir, "gpu-01", role="node", hosts=["127.0.0.1", "localhost"])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=(pki_dir / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def check_health(port: int, ca: Path, cert: Path, key: Path, host: str = "127.0.0.1") -> None:
    credentials = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    with grpc.secure_channel(f"{host}:{port}", credentials) as channel:
        check = channel.unary_unary(  # typed: the grpc_health stubs give HealthStub no Check method
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        assert check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_node_certificate_serves_mutual_tls_to_a_user(pki_dir: Path, tls_server: int, host: str) -> None:
    cert, key = pki.issue(pki_dir, "alice", role="user")
    check_health(tls_server, pki_dir / "ca.pem", cert, key, host=host)


def test_a_client_certificate_of_another_ca_is_refused(tmp_path: Path, pki_dir: Path, tls_server: int) -> None:
    other = tmp_path / "other"
    pki.create_ca(other, cluster="prod")
    cert, key = pki.issue(other, "mallory", role="admin")
    with pytest.raises(grpc.RpcError) as caught:
        check_health(tls_server, pki_dir / "ca.pem", cert, key)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

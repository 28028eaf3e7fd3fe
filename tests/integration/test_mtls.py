"""vgpud over TCP: mutual TLS only, identity from the certificate's SPIFFE id, roles from it, CA reload on SIGHUP.

Certificates are made with the real `vgpuctl pki` commands; clients are the real vgpuctl and the SDK.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

import vgpu
from tests.integration.conftest import wait_until
from tests.support import free_ports, write_expired_certificate
from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc
from vgpu.testing import LocalPool, local_pool


def pki(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vgpuctl", "pki", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


@dataclass(frozen=True)
class Pki:
    dir: Path

    def tls(self, name: str, ca: Path | None = None) -> vgpu.TlsConfig:
        return vgpu.TlsConfig(self.dir / f"{name}.pem", self.dir / f"{name}-key.pem", ca or self.dir / "ca.pem")

    def flags(self, name: str, ca: Path | None = None) -> list[str]:
        tls = self.tls(name, ca)
        return ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--tls-ca", str(tls.ca)]


def make_pki(directory: Path, cluster: str = "default") -> Pki:
    pki("init", str(directory), "--cluster", cluster)
    pki("issue", str(directory), "node-1", "--role", "node", "--host", "127.0.0.1", "--host", "localhost")
    pki("issue", str(directory), "alice", "--role", "user", "--groups", "ml")
    pki("issue", str(directory), "ops", "--role", "admin")
    return Pki(directory)


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[tuple[LocalPool, str, Pki]]:
    """A vgpud serving TCP with mutual TLS (the node certificate from `vgpuctl pki`), and the PKI."""
    own = make_pki(tmp_path / "pki")
    (port,) = free_ports(1)
    args = [
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(own.dir / "node-1.pem"),
        "--tls-key",
        str(own.dir / "node-1-key.pem"),
        "--tls-client-ca",
        str(own.dir / "ca.pem"),
    ]
    with local_pool("h100-80gb:1", extra_args=args) as pool:
        yield pool, f"127.0.0.1:{port}", own


def ctl(endpoint: str, flags: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VGPU_")}
    return subprocess.run(
        [sys.executable, "-m", "vgpuctl", "--endpoint", endpoint, *flags, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "COLUMNS": "200"},
        check=False,
    )


def test_users_admins_and_nodes_over_mutual_tls(tls_daemon: tuple[LocalPool, str, Pki]) -> None:
    pool, endpoint, own = tls_daemon
    gpus = ctl(endpoint, own.flags("ops"), "gpus")
    assert gpus.returncode == 0, gpus.stderr
    assert "h100-80gb" in gpus.stdout
    user_drain = ctl(endpoint, own.flags("alice"), "drain", pool.node_name)
    assert user_drain.returncode == 1
    assert user_drain.stderr.startswith("vgpuctl: error: ROLE_NOT_ALLOWED: ")
    assert "you are alice (user)" in user_drain.stderr
    node_evict = ctl(endpoint, own.flags("node-1"), "evict", "lease-0123456789ab")
    assert node_evict.returncode == 1
    assert "ROLE_NOT_ALLOWED" in node_evict.stderr
    assert ctl(endpoint, own.flags("node-1"), "nodes").returncode == 0  # reads are open to nodes
    assert ctl(endpoint, own.flags("ops"), "drain", pool.node_name).returncode == 0
    assert ctl(endpoint, own.flags("ops"), "drain", pool.node_name, "--undo").returncode == 0
    with vgpu.Pool(endpoint, tls=own.tls("alice")) as alice:
        lease = alice.acquire(memory="1GiB", compute=0.1, wait=False, description="over TLS")
        owner = alice.get_lease(lease.id, lease.token).owner
        assert (owner.user, owner.identity, owner.uid) == ("alice", "spiffe://default/user/alice", None)
        assert owner.host.startswith("ipv4:127.0.0.1:")
        # The same person over the Unix socket would be user alice; root (an admin) may act on the lease.
        with pool.pool() as root:
            assert root.get_lease(lease.id, lease.token).owner.user == "alice"
        lease.release()
    with pytest.raises(vgpu.InvalidRequestError, match="vgpud serves TCP only with mutual TLS"):
        vgpu.Pool(endpoint)


def test_clients_without_a_good_certificate_are_refused_and_told_why(
    tls_daemon: tuple[LocalPool, str, Pki], tmp_path: Path
) -> None:
    pool, endpoint, own = tls_daemon
    other = make_pki(tmp_path / "other")
    wrong_ca = ctl(endpoint, [*other.flags("ops", ca=own.dir / "ca.pem")], "drain", pool.node_name)
    assert wrong_ca.returncode == 1
    assert "was not issued by the CA in" in wrong_ca.stderr, wrong_ca.stderr
    trusting_other = ctl(endpoint, other.flags("ops"), "gpus")  # its own CA does not know the daemon's either
    assert trusting_other.returncode == 1, trusting_other.stderr
    assert "CERTIFICATE_UNTRUSTED" in trusting_other.stderr
    write_expired_certificate(own.dir, "late")
    late = ctl(endpoint, own.flags("late"), "gpus")
    assert late.returncode == 1, late.stderr
    assert "expired on" in late.stderr, late.stderr
    with vgpu.Pool(endpoint, tls=own.tls("late")) as client, pytest.raises(vgpu.AuthenticationError) as info:
        client.leases()
    assert info.value.reason == reasons.CERTIFICATE_EXPIRED
    no_cert = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials((own.dir / "ca.pem").read_bytes()))
    with no_cert, pytest.raises(grpc.RpcError) as refused:
        admin_pb2_grpc.AdminServiceStub(no_cert).DrainNode(admin_pb2.DrainNodeRequest(node=pool.node_name), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake itself is refused
    plain = grpc.insecure_channel(endpoint)
    with plain, pytest.raises(grpc.RpcError) as cleartext:
        admin_pb2_grpc.AdminServiceStub(plain).ListNodes(admin_pb2.ListNodesRequest(), timeout=5)
    assert cleartext.value.code() == grpc.StatusCode.UNAVAILABLE
    nodes = ctl(endpoint, own.flags("ops"), "nodes")
    assert nodes.returncode == 0
    assert "READY" in nodes.stdout.upper()


def test_a_certificate_for_another_cluster_is_refused(tmp_path: Path) -> None:
    ours, theirs = make_pki(tmp_path / "ours"), make_pki(tmp_path / "theirs", cluster="lab")
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes((ours.dir / "ca.pem").read_bytes() + (theirs.dir / "ca.pem").read_bytes())
    (port,) = free_ports(1)
    args = ["--listen", f"127.0.0.1:{port}", "--tls-cert", str(ours.dir / "node-1.pem")]
    args += ["--tls-key", str(ours.dir / "node-1-key.pem"), "--tls-client-ca", str(bundle)]
    with local_pool("h100-80gb:1", extra_args=args):
        done = ctl(f"127.0.0.1:{port}", theirs.flags("ops", ca=ours.dir / "ca.pem"), "gpus")
        assert done.returncode == 1
        assert "WRONG_CLUSTER" in done.stderr, done.stderr
        assert "cluster 'lab'" in done.stderr, done.stderr


def test_sighup_rereads_the_ca_and_old_certificates_stop_working_without_dropping_leases(
    tls_daemon: tuple[LocalPool, str, Pki], tmp_path: Path
) -> None:
    pool, endpoint, own = tls_daemon
    assert pool.pid is not None
    old_ca = tmp_path / "old-ca.pem"  # what clients keep trusting the daemon's (unchanged) certificate with
    old_ca.write_bytes((own.dir / "ca.pem").read_bytes())
    new = make_pki(tmp_path / "new")
    with vgpu.Pool(endpoint, tls=own.tls("alice", ca=old_ca)) as alice:
        lease = alice.acquire(memory="1GiB", compute=0.1, wait=False)
        (own.dir / "ca.pem").write_bytes((new.dir / "ca.pem").read_bytes())  # the daemon's --tls-client-ca
        os.kill(pool.pid, signal.SIGHUP)
        wait_until(lambda: "TLS files reloaded" in pool.log_tail(), what="the reload")
        with pytest.raises(vgpu.AuthenticationError) as info:
            alice.leases()  # its connection predates the change: the certificate is checked against the CA of now
        assert info.value.reason == reasons.CERTIFICATE_UNTRUSTED
        assert "the pool's CA was changed" in str(info.value)
        with pool.pool() as root:
            assert root.get_lease(lease.id, lease.token).state == "granted"  # nothing was dropped
    fresh_old = ctl(endpoint, own.flags("alice", ca=old_ca), "leases")
    assert fresh_old.returncode == 1, fresh_old.stderr
    assert "does not trust your client certificate" in fresh_old.stderr, fresh_old.stderr
    fresh_new = ctl(endpoint, new.flags("ops", ca=old_ca), "gpus")
    assert fresh_new.returncode == 0, fresh_new.stderr
    (own.dir / "ca.pem").write_text("not a certificate")
    os.kill(pool.pid, signal.SIGHUP)
    wait_until(lambda: "TLS files not reloaded" in pool.log_tail(), what="the refused reload")
    assert ctl(endpoint, new.flags("ops", ca=old_ca), "gpus").returncode == 0  # still the last good files


def test_listen_without_tls_files_does_not_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vgpud",
            "--sim",
            "h100-80gb:1",
            "--state-dir",
            str(tmp_path),
            "--listen",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "vgpud: error: --listen: tcp_listen: TCP is served only with mutual TLS: set tls.cert_file (--tls-cert), "
        "tls.key_file (--tls-key), tls.client_ca_file (--tls-client-ca)"
    )

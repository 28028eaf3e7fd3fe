"""Local credentials: minted for what the kernel reports, refused when forged, altered, expired or foreign."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from tests.unit.test_sdk_support import short_tmp_dir
from vgpu._private import reasons
from vgpu._private.local_credential import CredentialError, LocalCredential, credential_socket_path, fetch, socket_of
from vgpud._private.auth.credential_socket import CredentialSocket, peer_credentials
from vgpud._private.auth.credentials import CredentialKey
from vgpud._private.refusal import Refusal

NOW = 1_800_000_000.0


def key(seed: int = 1) -> CredentialKey:
    return CredentialKey(bytes([seed]) * 32)


def refusal(credential: str, *, now: float = NOW, by: CredentialKey | None = None) -> Refusal:
    with pytest.raises(Refusal) as info:
        (by or key()).verify(credential, now)
    return info.value


def test_a_minted_credential_proves_uid_gids_and_pid_until_it_expires() -> None:
    credential = key().mint(1000, (1000, 27, 44), 4242, NOW + 300)
    claims = key().verify(credential, NOW + 299)
    assert (claims.uid, claims.gids, claims.pid) == (1000, (1000, 27, 44), 4242)
    expired = refusal(credential, now=NOW + 300)
    assert expired.reason == reasons.CREDENTIAL_EXPIRED
    assert "expired 0s ago" in expired.message


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda c: c.replace(".1000.", ".0.", 1), "signature does not match"),  # claim to be root
        (lambda c: c.replace("1000,27", "1000,0", 1), "signature does not match"),  # add gid 0
        (lambda c: c[:-4] + "0000", "signature does not match"),
        (lambda c: "v2" + c[2:], "not a vgpu credential of this version"),
        (lambda c: c.rsplit(".", 1)[0], "not a vgpu credential of this version"),
        (lambda _c: "", "not a vgpu credential"),
        (lambda _c: "x" * 5000, "not a vgpu credential"),
        (lambda c: c + "é", "not a vgpu credential"),
    ],
)
def test_an_altered_or_garbled_credential_is_refused(change: object, why: str) -> None:
    credential = key().mint(1000, (1000, 27), 10, NOW + 300)
    refused = refusal(change(credential))  # type: ignore[operator]
    assert refused.reason == reasons.CREDENTIAL_INVALID
    assert why in refused.message


def test_a_credential_of_another_daemon_is_refused_as_such() -> None:
    credential = key(2).mint(1000, (1000,), 10, NOW + 300)
    refused = refusal(credential, by=key(1))
    assert refused.reason == reasons.CREDENTIAL_INVALID
    assert "minted by another vgpud" in refused.message


def test_the_key_is_made_0600_in_a_0700_directory_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state" / "auth" / "credential.key"
    first = CredentialKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = CredentialKey.load_or_create(path)
    assert again.key_id == first.key_id
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="readable by others"):
        CredentialKey.load_or_create(path)


def test_the_credential_socket_answers_with_what_the_kernel_reports() -> None:
    async def scenario(path: Path) -> tuple[str, float]:
        server = CredentialSocket(path, key(), 120.0)
        await server.start()
        try:
            assert stat.S_IMODE(await asyncio.to_thread(lambda: path.stat().st_mode)) == 0o666
            return await asyncio.to_thread(fetch, path, 5.0)
        finally:
            await server.stop()

    with short_tmp_dir() as tmp:
        path = tmp / "vgpud.sock.cred"
        credential, ttl = asyncio.run(scenario(path))
        assert not path.exists()
    claims = key().verify(credential, time.time())
    assert ttl == 120.0
    assert claims.uid == os.getuid()
    assert claims.pid == os.getpid()
    assert claims.gids[0] == os.getgid()
    assert set(claims.gids) >= set(os.getgroups()) - {os.getgid()}


def test_peer_credentials_of_a_socketpair() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        pid, uid, gid, groups = peer_credentials(left)
    assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())
    assert set(groups) == set(os.getgroups())


def test_the_client_keeps_its_credential_and_renews_it_at_two_thirds_of_its_life() -> None:
    now = [0.0]

    async def scenario(sock: Path) -> list[str]:
        server = CredentialSocket(credential_socket_path(sock), key(), 30.0)
        await server.start()
        try:
            client = LocalCredential(sock, clock=lambda: now[0])
            seen = [await asyncio.to_thread(client.metadata, 5.0)]
            now[0] = 19.0
            seen.append(await asyncio.to_thread(client.metadata, 5.0))
            now[0] = 21.0
            seen.append(await client.metadata_async(5.0))
            assert client.forget()
            assert not client.forget()
            assert server.served == 2
            return [m[0][1] for m in seen]
        finally:
            await server.stop()

    with short_tmp_dir() as tmp:
        first, kept, renewed = asyncio.run(scenario(tmp / "vgpud.sock"))
    assert first == kept != renewed


def test_without_a_credential_socket_calls_go_without_one_and_a_dead_socket_says_so() -> None:
    with short_tmp_dir() as tmp:
        assert LocalCredential(tmp / "vgpud.sock").metadata(1.0) == ()
        dead = tmp / "dead.sock.cred"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(dead))
        listener.close()  # the file stays, nobody listens
        with pytest.raises(CredentialError, match=r"cannot get a credential from .*dead.sock.cred"):
            LocalCredential(tmp / "dead.sock").metadata(1.0)


def test_socket_paths() -> None:
    assert socket_of("unix:///run/vgpu/vgpud.sock") == Path("/run/vgpu/vgpud.sock")
    assert socket_of("10.0.0.1:7070") is None
    assert credential_socket_path(Path("/run/vgpu/vgpud.sock")) == Path("/run/vgpu/vgpud.sock.cred")

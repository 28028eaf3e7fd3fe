"""Mapping host processes to leases: identity sockets checked by the kernel, environments, protected pids."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from vgpu._private.process_identity import PREFIX, ProcessIdentity
from vgpud._private import process_map


def test_an_identity_socket_names_its_process_and_the_leases_it_holds() -> None:
    me = ProcessIdentity()
    name = me.hold("lease-aaaa.secret-one")
    assert name is not None
    assert name.startswith(PREFIX)
    me.hold("lease-bbbb.secret-two")
    found = process_map.peer(name)
    assert found is not None
    assert found.pid == os.getpid()
    assert found.uid == os.getuid()
    assert found.token_digests == {
        hashlib.sha256(b"lease-aaaa.secret-one").hexdigest(),
        hashlib.sha256(b"lease-bbbb.secret-two").hexdigest(),
    }
    me.drop("lease-aaaa.secret-one")
    again = process_map.peer(name)
    assert again is not None
    assert again.token_digests == {hashlib.sha256(b"lease-bbbb.secret-two").hexdigest()}


def test_a_token_held_twice_is_answered_until_both_holders_drop_it() -> None:
    me = ProcessIdentity()
    name = me.hold("lease-cccc.x")
    me.hold("lease-cccc.x")
    me.drop("lease-cccc.x")
    assert name is not None
    first = process_map.peer(name)
    assert first is not None
    assert first.token_digests
    me.drop("lease-cccc.x")
    second = process_map.peer(name)
    assert second is not None
    assert not second.token_digests


@pytest.mark.parametrize(
    "name",
    ["", "dbus-session", f"{PREFIX}", f"{PREFIX}12/../x", f"{PREFIX}a b", f"{PREFIX}{'a' * 100}", f"{PREFIX}é"],
)
def test_only_vgpu_socket_names_are_dialled(name: str) -> None:
    assert not process_map.valid_identity_name(name)
    assert process_map.peer(name) is None


def test_nobody_listening_is_no_peer() -> None:
    assert process_map.peer(f"{PREFIX}1-deadbeefdeadbeef") is None


def _fake_proc(root: Path, pid: int, env: dict[str, str], state: str = "S") -> None:
    entry = root / str(pid)
    entry.mkdir()
    (entry / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0")
    (entry / "stat").write_text(f"{pid} (my (odd) name) {state} 1 0 0\n")


def test_processes_are_found_by_the_lease_id_in_their_environment(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 100, {"PATH": "/bin", "VGPU_LEASE_ID": "lease-a"})
    _fake_proc(tmp_path, 101, {"VGPU_LEASE_ID": "lease-a"})
    _fake_proc(tmp_path, 102, {"VGPU_LEASE_ID": "lease-b"})
    _fake_proc(tmp_path, 103, {"HOME": "/root"})
    (tmp_path / "self").mkdir()
    found = process_map.environment_leases(["lease-a", "lease-c"], proc=tmp_path)
    assert found == {"lease-a": {100, 101}}
    assert process_map.environment_leases([], proc=tmp_path) == {}


def test_zombies_and_missing_processes_are_not_alive(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 200, {}, state="Z")
    _fake_proc(tmp_path, 201, {}, state="S")
    assert not process_map.alive(200, proc=tmp_path)
    assert process_map.alive(201, proc=tmp_path)
    assert not process_map.alive(202, proc=tmp_path)


def test_init_the_daemon_and_its_ancestors_are_protected() -> None:
    protected = process_map.protected_pids()
    assert {1, os.getpid(), os.getppid()} <= protected

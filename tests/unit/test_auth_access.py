"""Acquire-time rules (project membership, classes limited to projects), lease ownership, redaction, and whom
the node watchdog may signal."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.test_records import lease
from vgpu._private import reasons
from vgpud._private.auth.access import Access, check_members, check_owner, is_member, sees_everything
from vgpud._private.auth.identity import Identity, Role
from vgpud._private.auth.owner import owner_of
from vgpud._private.auth.signal_policy import owner_uid, refusal_to_signal
from vgpud._private.core.model import Owner
from vgpud._private.core.priorities import PriorityClass
from vgpud._private.core.projects import Quota
from vgpud._private.refusal import Refusal

ADA = Identity(role=Role.USER, name="ada", groups=frozenset({"ml", "ada"}), uid=1000, gids=(1000, 2000), pid=7)
BOB = Identity(role=Role.USER, name="bob", groups=frozenset({"bob"}), uid=1001, gids=(1001,))
ROOT = Identity(role=Role.ADMIN, name="root", uid=0, gids=(0,))
CERT = Identity(role=Role.USER, name="ada", groups=frozenset({"ml"}), spiffe_id="spiffe://c/user/ada", peer="ipv4:1")
TRAIN = PriorityClass("train", 100)
INFERENCE = PriorityClass("inference", 200, preemptible=False, projects=("serving",))
VISION = Quota("vision", members=("user:ada", "group:ops"))


def refused(call: object) -> Refusal:
    with pytest.raises(Refusal) as info:
        call()  # type: ignore[operator]
    return info.value


def test_members_are_named_users_or_members_of_named_groups() -> None:
    assert is_member(ADA, ("user:ada",))
    assert is_member(ADA, ("group:ml",))
    assert is_member(CERT, ("group:ml",))
    assert not is_member(BOB, ("user:ada", "group:ml"))
    assert not is_member(ADA, ("group:ada-team", "user:ad"))
    assert is_member(Identity(role=Role.USER, name="uid:5", uid=5), ("user:uid:5",))


def test_a_user_acquires_only_in_projects_they_belong_to() -> None:
    access = Access()
    access.check_acquire(ADA, "vision", VISION, TRAIN)
    denied = refused(lambda: access.check_acquire(BOB, "vision", VISION, TRAIN))
    assert denied.reason == reasons.NOT_PROJECT_MEMBER
    assert "bob is not a member of project 'vision'" in denied.message
    assert "vgpuctl quota set vision --members ...,user:bob" in denied.message
    assert refused(lambda: access.check_acquire(ADA, "nlp", Quota("nlp"), TRAIN)).reason == reasons.NOT_PROJECT_MEMBER
    access.check_acquire(ROOT, "nlp", Quota("nlp"), TRAIN)  # admins anywhere


def test_the_default_project_is_open_unless_configured_closed() -> None:
    Access().check_acquire(BOB, "", None, TRAIN)
    Access().check_acquire(BOB, "default", None, TRAIN)
    closed = Access(open_default_project=False)
    assert refused(lambda: closed.check_acquire(BOB, "", None, TRAIN)).reason == reasons.NOT_PROJECT_MEMBER
    closed.check_acquire(BOB, "", Quota("default", members=("user:bob",)), TRAIN)


def test_a_class_limited_to_projects_is_refused_elsewhere_even_to_admins() -> None:
    denied = refused(lambda: Access().check_acquire(ROOT, "vision", VISION, INFERENCE))
    assert denied.reason == reasons.PRIORITY_NOT_ALLOWED
    assert "reserved for project(s) serving" in denied.message
    Access().check_acquire(ROOT, "serving", Quota("serving"), INFERENCE)


def test_only_the_owner_or_an_admin_acts_on_a_lease_and_others_see_it_redacted() -> None:
    record = lease(owner=Owner("ada", "n1", 7, "job", "local:uid=1000", 1000))
    check_owner(ADA, record)
    check_owner(CERT, record)  # the same person through a certificate
    check_owner(ROOT, record)
    denied = refused(lambda: check_owner(BOB, record))
    assert denied.reason == reasons.NOT_LEASE_OWNER
    assert sees_everything(ADA, record)
    assert sees_everything(ROOT, record)
    assert not sees_everything(BOB, record)
    assert not sees_everything(None, record)
    nobody = lease(owner=Owner())
    assert refused(lambda: check_owner(ADA, nobody)).reason == reasons.NOT_LEASE_OWNER


def test_members_lists_are_checked() -> None:
    assert check_members(["user:ada", "group:ml", "user:ada"]) == ("user:ada", "group:ml")
    for bad in ("ada", "user:", "team:x", "user:a b", "group:" + "x" * 64):
        assert refused(lambda bad=bad: check_members([bad])).reason == reasons.INVALID_REQUEST
    assert refused(lambda: check_members([f"user:u{i}" for i in range(1001)])).reason == reasons.INVALID_REQUEST


def test_the_stored_owner_is_the_verified_caller_not_the_request() -> None:
    assert owner_of(ADA, "node-1", "my job") == Owner("ada", "node-1", 7, "my job", "local:uid=1000", 1000)
    assert owner_of(CERT, "node-1", "") == Owner("ada", "ipv4:1", 0, "", "spiffe://c/user/ada", None)


def test_the_watchdog_signals_only_processes_of_the_lease_owner() -> None:
    record = lease(owner=Owner("ada", "n1", 7, "", "local:uid=1000", 1000))
    assert owner_uid(record, "n1", lambda _n: None) == 1000
    assert owner_uid(record, "n2", {"ada": 1500}.get) == 1500  # acquired elsewhere: the name's uid here
    assert owner_uid(dataclasses.replace(record, owner=Owner()), "n1", lambda _n: 9) is None
    assert refusal_to_signal((1000, 1000), 1000, allow_root=False) is None
    assert (
        refusal_to_signal((1001, 1001), 1000, allow_root=True) == "it runs as uid 1001, the lease belongs to uid 1000"
    )
    assert "runs as root" in (refusal_to_signal((0, 0), 1000, allow_root=False) or "")
    assert "runs as root" in (refusal_to_signal((1000, 0), 1000, allow_root=False) or "")  # setuid root
    assert refusal_to_signal((0, 0), 1000, allow_root=True) is None
    assert refusal_to_signal((0, 0), 0, allow_root=False) is None  # root's own lease
    assert refusal_to_signal((1000, 1000), None, allow_root=True) == "the lease's owner has no uid on this host"
    assert refusal_to_signal(None, 1000, allow_root=True) == "the process is gone"

"""The audit trail: records written in batches, refusals folded per caller, a bounded buffer, retention."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import pytest

from vgpud._private.auth.audit import BATCH, FOLD_WINDOW_S, MAX_PENDING, AuditTrail
from vgpud._private.auth.audit_records import AuditEntry, AuditKeys
from vgpud._private.auth.identity import Identity, Role
from vgpud._private.store.base import Delete, KeyValue, Op, Put, Snapshot, Store, StoreUnavailableError, TxnResult

ADA = Identity(role=Role.USER, name="ada", uid=1000, gids=(1000,))
ROOT = Identity(role=Role.ADMIN, name="root", uid=0, gids=(0,))
CERT = Identity(role=Role.ADMIN, name="ops", spiffe_id="spiffe://c/admin/ops", peer="ipv4:10.0.0.1:5000")
KEYS = AuditKeys("c")


class Etcd:
    """Sorted keys, transactions of puts and range deletes, range reads; `down` refuses every call."""

    def __init__(self) -> None:
        self.kvs: dict[str, bytes] = {}
        self.txns = 0
        self.down = False

    async def txn(self, compares: Sequence[object], success: Sequence[Op], *, timeout: float) -> TxnResult:
        if self.down:
            raise StoreUnavailableError("etcd is away")
        assert not compares
        self.txns += 1
        for op in success:
            if isinstance(op, Put):
                self.kvs[op.key] = op.value
            else:
                assert isinstance(op, Delete)
                for key in [k for k in self.kvs if op.key <= k < op.range_end]:
                    del self.kvs[key]
        return TxnResult(True, self.txns)

    async def get_range(self, start: str, end: str, *, timeout: float) -> Snapshot:
        return Snapshot([KeyValue(k, v, 1, 1, 0) for k, v in sorted(self.kvs.items()) if start <= k < end], 1)


def trail(etcd: Etcd, clock: list[float], refusals: list[tuple[str, str]] | None = None) -> AuditTrail:
    return AuditTrail(
        cast("Store", etcd),
        KEYS,
        "node-1",
        retention_days=1,
        timeout=1,
        on_refusal=lambda m, r: (refusals if refusals is not None else []).append((m, r)),
        clock=lambda: clock[0],
    )


def stored(etcd: Etcd) -> list[AuditEntry]:
    return [AuditEntry.from_json(v) for _, v in sorted(etcd.kvs.items())]


def test_mutations_and_refusals_are_written_with_who_what_and_why() -> None:
    etcd, clock, counted = Etcd(), [1000.0], list[tuple[str, str]]()
    audit = trail(etcd, clock, counted)
    audit.allowed(ROOT, "AdminService/EvictLease", "lease=lease-1", 'lease_id: "lease-1"')
    audit.refused(
        ADA, peer="unix:", method="AdminService/DrainNode", target="node=n1", reason="ROLE_NOT_ALLOWED", message="no"
    )
    audit.refused(
        None, peer="unix:", method="AdminService/ListGpus", target="", reason="CREDENTIAL_MISSING", message="?"
    )
    asyncio.run(audit.flush())
    allowed, refused, anonymous = stored(etcd)
    assert (allowed.user, allowed.identity, allowed.role, allowed.outcome) == (
        "root",
        "local:uid=0",
        "admin",
        "allowed",
    )
    assert (allowed.method, allowed.target, allowed.node) == ("AdminService/EvictLease", "lease=lease-1", "node-1")
    assert (refused.user, refused.identity, refused.outcome, refused.reason) == (
        "ada",
        "local:uid=1000",
        "refused",
        "ROLE_NOT_ALLOWED",
    )
    assert (anonymous.user, anonymous.identity, anonymous.peer) == ("", "", "unix:")
    assert counted == [("AdminService/DrainNode", "ROLE_NOT_ALLOWED"), ("AdminService/ListGpus", "CREDENTIAL_MISSING")]
    assert all(k.startswith("/vgpu-audit/c/0000001000000-node-1-") for k in etcd.kvs)


def test_a_flood_of_refusals_is_folded_per_caller_method_and_reason() -> None:
    etcd, clock = Etcd(), [1000.0]
    audit = trail(etcd, clock)
    for _ in range(500):
        audit.refused(
            ADA, peer="unix:", method="AdminService/EvictLease", target="", reason="ROLE_NOT_ALLOWED", message=""
        )
    audit.refused(
        CERT, peer="ipv4:x", method="AdminService/EvictLease", target="", reason="ROLE_NOT_ALLOWED", message=""
    )
    clock[0] += FOLD_WINDOW_S
    audit.refused(ADA, peer="unix:", method="AdminService/EvictLease", target="", reason="ROLE_NOT_ALLOWED", message="")
    asyncio.run(audit.flush())
    records = stored(etcd)
    assert [(r.user, r.repeats) for r in records] == [("ada", 0), ("ops", 0), ("ada", 499), ("ada", 0)]
    assert records[2].message == "499 more like it"


def test_records_wait_while_etcd_is_away_and_the_buffer_stays_bounded() -> None:
    etcd, clock = Etcd(), [1000.0]
    audit = trail(etcd, clock)
    etcd.down = True
    for i in range(MAX_PENDING + 10):
        audit.allowed(ROOT, "AdminService/SetQuota", f"project=p{i}")
    asyncio.run(audit.flush())
    assert not etcd.kvs
    etcd.down = False
    asyncio.run(audit.flush())
    assert len(etcd.kvs) == MAX_PENDING
    assert etcd.txns == -(-MAX_PENDING // BATCH)
    assert stored(etcd)[0].target == "project=p10"  # the oldest ten were dropped


def test_reads_go_by_time_and_identity_and_old_records_are_pruned() -> None:
    etcd, clock = Etcd(), [1000.0]
    audit = trail(etcd, clock)
    audit.allowed(ROOT, "AdminService/DrainNode", "node=a")
    clock[0] = 1000.0 + 3600
    audit.allowed(CERT, "AdminService/DrainNode", "node=b")
    audit.refused(
        ADA, peer="unix:", method="AdminService/DrainNode", target="node=c", reason="ROLE_NOT_ALLOWED", message=""
    )
    asyncio.run(audit.flush())
    recent, truncated = asyncio.run(audit.read(60, "", 100))
    assert [r.target for r in recent] == ["node=b", "node=c"]
    assert not truncated
    assert [r.target for r in asyncio.run(audit.read(7200, "uid:0", 100))[0]] == ["node=a"]
    assert [r.target for r in asyncio.run(audit.read(7200, "ada", 100))[0]] == ["node=c"]
    assert [r.target for r in asyncio.run(audit.read(7200, "spiffe://c/admin/ops", 100))[0]] == ["node=b"]
    newest, truncated = asyncio.run(audit.read(7200, "", 2))
    assert [r.target for r in newest] == ["node=b", "node=c"]
    assert truncated
    clock[0] = 1000.0 + 86400 + 1
    asyncio.run(audit.prune())
    assert [r.target for r in stored(etcd)] == ["node=b", "node=c"]


@pytest.mark.timeout(10)
def test_the_writer_flushes_what_is_left_when_stopping() -> None:
    etcd, clock = Etcd(), [1000.0]
    audit = trail(etcd, clock)

    async def scenario() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(audit.run(stopping))
        audit.allowed(ROOT, "AdminService/DrainNode", "node=a")
        audit.refused(
            ADA, peer="unix:", method="AdminService/DrainNode", target="", reason="ROLE_NOT_ALLOWED", message=""
        )
        audit.refused(
            ADA, peer="unix:", method="AdminService/DrainNode", target="", reason="ROLE_NOT_ALLOWED", message=""
        )
        stopping.set()
        await task

    asyncio.run(scenario())
    assert [(r.outcome, r.repeats) for r in stored(etcd)] == [("allowed", 0), ("refused", 0), ("refused", 1)]

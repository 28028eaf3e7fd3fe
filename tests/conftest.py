"""Fixtures shared by every test: a private etcd per test, and a store connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from vgpud._private.store.embedded_etcd import EmbeddedEtcd
from vgpud._private.store.etcd_store import EtcdStore


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    """A fresh etcd on free loopback ports with its data in tmp_path; stopped after the test.

    A plain (non-async) fixture on purpose: it runs on the main thread, which outlives etcd, so etcd's
    parent-death signal cannot fire early (see EmbeddedEtcd).
    """
    server = EmbeddedEtcd(tmp_path / "etcd")
    server.start(timeout=15.0)
    try:
        yield server
    finally:
        server.stop(timeout=5.0)


@pytest.fixture
async def etcd_store(etcd: EmbeddedEtcd) -> AsyncIterator[EtcdStore]:
    """An EtcdStore connected to the `etcd` fixture; closed after the test."""
    store = await EtcdStore.connect([etcd.endpoint], connect_timeout=5.0)
    try:
        yield store
    finally:
        await store.close()

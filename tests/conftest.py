"""Fixtures shared by every test: a private etcd per test, a store connected to it, a fake MPS control binary."""

from __future__ import annotations

import sys
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
    store = await EtcdStore.connect([etcd.endpoint], connect_timeout=5.0, **etcd.client_tls.store_args())
    try:
        yield store
    finally:
        await store.close()


FAKE_MPS_CONTROL = Path(__file__).resolve().parent / "fixtures" / "fake_mps_control.py"


@pytest.fixture
def mps_binary(tmp_path: Path) -> Path:
    """A stand-in nvidia-cuda-mps-control (tests/fixtures/fake_mps_control.py), run by this test's interpreter."""
    wrapper = tmp_path / "bin" / "nvidia-cuda-mps-control"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_MPS_CONTROL}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper

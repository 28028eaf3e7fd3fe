"""EtcdStore and EmbeddedEtcd against real etcd processes on loopback (one per test, in tmp_path)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import ssl
import stat
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.parent_death import assert_etcd_dies_with_killed_parent
from tests.support import (
    compact,
    etcd_metric,
    free_port,
    free_ports,
    watcher_streams,
    write_test_pki,
)
from vgpu._private import pki
from vgpud._private.store import embedded_pki
from vgpud._private.store.base import (
    CompactedError,
    Delete,
    EventType,
    ModRevisionIs,
    Put,
    StoreError,
    StoreUnavailableError,
    ValueIs,
    WatchEvent,
)
from vgpud._private.store.embedded_etcd import EmbeddedEtcd, EmbeddedEtcdError, find_etcd_binary
from vgpud._private.store.etcd_store import EtcdStore

T = 5.0  # per-call deadline in these tests


async def take(events: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    """The next `n` events, failing the test instead of hanging when they do not come."""
    async with asyncio.timeout(10):
        return [await anext(events) for _ in range(n)]


async def streams_drop_to_zero(etcd: EmbeddedEtcd) -> None:
    """Wait until etcd has no watch stream open: it notices a reset stream a moment later, unannounced."""
    async with asyncio.timeout(5):
        while await watcher_streams(etcd.endpoint, etcd.client_tls) != 0:  # noqa: ASYNC110 -- nothing to await but etcd's count
            await asyncio.sleep(0.02)


# -- key-value ------------------------------------------------------------------------------------------
async def test_txn_puts_and_get_reads(etcd_store: EtcdStore) -> None:
    result = await etcd_store.txn([], [Put("/t/a", b"1"), Put("/t/é", b"\x00\xff")], timeout=T)
    assert result.succeeded
    a = await etcd_store.get("/t/a", timeout=T)
    assert a is not None
    assert (a.key, a.value, a.mod_revision, a.create_revision, a.lease) == (
        "/t/a",
        b"1",
        result.revision,
        result.revision,
        0,
    )
    accented = await etcd_store.get("/t/é", timeout=T)
    assert accented is not None
    assert accented.value == b"\x00\xff"
    assert await etcd_store.get("/t/missing", timeout=T) is None


async def test_mod_revision_zero_means_absent(etcd_store: EtcdStore) -> None:
    created = await etcd_store.txn([ModRevisionIs("/t/k", 0)], [Put("/t/k", b"v1")], timeout=T)
    assert created.succeeded
    again = await etcd_store.txn([ModRevisionIs("/t/k", 0)], [Put("/t/k", b"v2")], [Put("/t/lost", b"x")], timeout=T)
    assert not again.succeeded
    assert again.revision == created.revision + 1  # the failure branch ran and wrote
    kv = await etcd_store.get("/t/k", timeout=T)
    assert kv is not None
    assert kv.value == b"v1"
    assert await etcd_store.get("/t/lost", timeout=T) is not None


async def test_compare_on_mod_revision_and_value(etcd_store: EtcdStore) -> None:
    first = await etcd_store.txn([], [Put("/t/k", b"v1")], timeout=T)
    stale = await etcd_store.txn([ModRevisionIs("/t/k", first.revision - 1)], [Put("/t/k", b"no")], timeout=T)
    assert not stale.succeeded
    assert stale.revision == first.revision  # nothing written
    current = await etcd_store.txn([ModRevisionIs("/t/k", first.revision)], [Put("/t/k", b"v2")], timeout=T)
    assert current.succeeded
    assert current.revision == first.revision + 1
    assert not (await etcd_store.txn([ValueIs("/t/k", b"v1")], [Delete("/t/k")], timeout=T)).succeeded
    assert not (await etcd_store.txn([ValueIs("/t/absent", b"")], [Delete("/t/k")], timeout=T)).succeeded
    assert (await etcd_store.txn([ValueIs("/t/k", b"v2")], [Delete("/t/k")], timeout=T)).succeeded
    assert await etcd_store.get("/t/k", timeout=T) is None


async def test_get_prefix_is_sorted_with_the_read_revision(etcd_store: EtcdStore) -> None:
    keys = ["/p/b", "/p/a/2", "/p/ü", "/p/a/1", "/p/c"]
    for key in keys:
        last = await etcd_store.txn([], [Put(key, key.encode())], timeout=T)
    await etcd_store.txn([], [Put("/pz", b"outside"), Put("/o", b"outside")], timeout=T)
    snapshot = await etcd_store.get_prefix("/p/", timeout=T)
    assert [kv.key for kv in snapshot.kvs] == sorted(keys)
    assert all(kv.value == kv.key.encode() for kv in snapshot.kvs)
    assert snapshot.revision == last.revision + 1
    await etcd_store.txn([], [Delete("/p/a/", prefix=True)], timeout=T)
    assert [kv.key for kv in (await etcd_store.get_prefix("/p/", timeout=T)).kvs] == ["/p/b", "/p/c", "/p/ü"]
    assert len((await etcd_store.get_prefix("", timeout=T)).kvs) == 5


# -- leases ---------------------------------------------------------------------------------------------
async def test_grant_refresh_revoke(etcd_store: EtcdStore) -> None:
    lease = await etcd_store.grant(30, timeout=T)
    await etcd_store.txn([], [Put("/l/k", b"v", lease=lease)], timeout=T)
    kv = await etcd_store.get("/l/k", timeout=T)
    assert kv is not None
    assert kv.lease == lease
    assert 0 < await etcd_store.refresh(lease, timeout=T) <= 30
    await etcd_store.revoke(lease, timeout=T)
    assert await etcd_store.get("/l/k", timeout=T) is None
    assert await etcd_store.refresh(lease, timeout=T) == 0
    await etcd_store.revoke(lease, timeout=T)  # again: not an error
    await etcd_store.revoke(123456789, timeout=T)  # never granted: not an error


async def test_concurrent_refreshes_get_their_own_answers(etcd_store: EtcdStore) -> None:
    short, long_, gone = [await etcd_store.grant(ttl, timeout=T) for ttl in (10, 60, 60)]
    await etcd_store.revoke(gone, timeout=T)
    ttls = await asyncio.gather(*(etcd_store.refresh(x, timeout=T) for x in (long_, gone, short, long_, gone)))
    assert ttls[1] == ttls[4] == 0
    assert 10 < ttls[0] <= 60
    assert ttls[3] == ttls[0]
    assert 0 < ttls[2] <= 10


async def test_expired_lease_deletes_its_key(etcd_store: EtcdStore) -> None:
    lease = await etcd_store.grant(1, timeout=T)
    put = await etcd_store.txn([], [Put("/l/alive", b"", lease=lease)], timeout=T)
    async with contextlib.aclosing(etcd_store.watch_prefix("/l/", start_revision=put.revision + 1)) as events:
        (event,) = await take(events, 1)
    assert event.type is EventType.DELETE
    assert event.kv.key == "/l/alive"
    assert await etcd_store.refresh(lease, timeout=T) == 0


# -- watch ----------------------------------------------------------------------------------------------
async def test_watch_delivers_in_order_and_resumes_from_a_revision(etcd_store: EtcdStore) -> None:
    start = (await etcd_store.get_prefix("/w/", timeout=T)).revision + 1
    async with contextlib.aclosing(etcd_store.watch_prefix("/w/", start_revision=start)) as events:
        a = await etcd_store.txn([], [Put("/w/a", b"1")], timeout=T)
        await etcd_store.txn([], [Put("/elsewhere", b"x")], timeout=T)
        b = await etcd_store.txn([], [Put("/w/b", b"2")], timeout=T)
        gone = await etcd_store.txn([], [Delete("/w/a")], timeout=T)
        seen = await take(events, 3)
    assert [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in seen] == [
        (EventType.PUT, "/w/a", b"1", a.revision),
        (EventType.PUT, "/w/b", b"2", b.revision),
        (EventType.DELETE, "/w/a", b"", gone.revision),
    ]
    async with contextlib.aclosing(etcd_store.watch_prefix("/w/", start_revision=b.revision)) as resumed:
        again = await take(resumed, 2)
    assert [e.kv.mod_revision for e in again] == [b.revision, gone.revision]


async def test_watch_after_compaction_raises_compacted(etcd: EmbeddedEtcd, etcd_store: EtcdStore) -> None:
    first = await etcd_store.txn([], [Put("/c/k", b"1")], timeout=T)
    last = await etcd_store.txn([], [Put("/c/k", b"2")], timeout=T)
    await compact(etcd.endpoint, last.revision, etcd.client_tls)
    with pytest.raises(CompactedError) as caught:
        await take(etcd_store.watch_prefix("/c/", start_revision=first.revision), 1)
    assert caught.value.compact_revision == last.revision


async def test_cancelling_the_consumer_closes_the_watch_stream(etcd: EmbeddedEtcd, etcd_store: EtcdStore) -> None:
    got_one = asyncio.Event()

    async def consume(start: int) -> None:
        async for _ in etcd_store.watch_prefix("/x/", start_revision=start):
            got_one.set()

    put = await etcd_store.txn([], [Put("/x/k", b"")], timeout=T)
    task = asyncio.create_task(consume(put.revision))
    async with asyncio.timeout(10):
        await got_one.wait()
    assert await watcher_streams(etcd.endpoint, etcd.client_tls) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await streams_drop_to_zero(etcd)
    async with contextlib.aclosing(etcd_store.watch_prefix("/x/", start_revision=put.revision)) as events:
        await take(events, 1)
        assert await watcher_streams(etcd.endpoint, etcd.client_tls) == 1
    await streams_drop_to_zero(etcd)  # closing the iterator closed its stream


async def test_closing_the_store_ends_its_watches(etcd: EmbeddedEtcd) -> None:
    store = await EtcdStore.connect([etcd.endpoint], connect_timeout=5, **etcd.client_tls.store_args())
    put = await store.txn([], [Put("/x/k", b"")], timeout=T)
    events = store.watch_prefix("/x/", start_revision=put.revision)
    await take(events, 1)  # the stream is open
    pending = asyncio.ensure_future(anext(events))
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        async with asyncio.timeout(5):
            await pending


async def watch_streams_started(etcd: EmbeddedEtcd) -> int:
    """How many Watch streams etcd has ever accepted (its gRPC server counter)."""
    return await etcd_metric(
        etcd.endpoint,
        'grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch"',
        etcd.client_tls,
    )


async def test_a_quiet_watch_is_kept_by_progress_answers_and_yields_nothing(etcd: EmbeddedEtcd) -> None:
    store = await EtcdStore.connect(
        [etcd.endpoint], connect_timeout=5, **etcd.client_tls.store_args(), watch_check_after=0.1
    )
    try:
        start = (await store.get_prefix("/q/", timeout=T)).revision + 1
        async with contextlib.aclosing(store.watch_prefix("/q/", start_revision=start)) as events:
            pending = asyncio.ensure_future(anext(events))
            # Ten silence checks' worth of quiet: each asks etcd for progress and gets an answer with no events.
            done, _ = await asyncio.wait({pending}, timeout=1.0)
            assert not done, f"a progress answer was yielded: {pending.result()}"
            assert await watch_streams_started(etcd) == 1  # answered checks keep the stream
            put = await store.txn([], [Put("/q/k", b"v")], timeout=T)
            async with asyncio.timeout(10):
                event = await pending
        assert (event.kv.key, event.kv.mod_revision) == ("/q/k", put.revision)
    finally:
        await store.close()


async def test_watch_resumes_across_an_etcd_restart_without_loss_or_repeats(etcd: EmbeddedEtcd) -> None:
    store = await EtcdStore.connect([etcd.endpoint], connect_timeout=5, **etcd.client_tls.store_args())
    try:
        lease = await store.grant(60, timeout=T)
        first = await store.txn([], [Put("/r/a", b"1")], timeout=T)
        events = store.watch_prefix("/r/", start_revision=first.revision)
        (a,) = await take(events, 1)
        port = etcd.endpoint
        etcd.stop()
        await etcd.astart()
        assert etcd.endpoint == port  # the saved port was free again
        writer = await EtcdStore.connect([etcd.endpoint], connect_timeout=5, **etcd.client_tls.store_args())
        try:
            b = await writer.txn([], [Put("/r/b", b"2")], timeout=T)
        finally:
            await writer.close()
        (b_event,) = await take(events, 1)
        await events.aclose()
        assert (a.kv.key, a.kv.mod_revision) == ("/r/a", first.revision)
        assert (b_event.kv.key, b_event.kv.mod_revision) == ("/r/b", b.revision)
        assert await store.refresh(lease, timeout=T) > 0  # a new keep-alive stream replaces the broken one
        kv = await store.get("/r/a", timeout=T)
        assert kv is not None
        assert kv.value == b"1"  # the data survived the restart
    finally:
        await store.close()


# -- failures -------------------------------------------------------------------------------------------
async def test_connect_to_a_dead_endpoint_fails_in_bounded_time() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=endpoint):
        await EtcdStore.connect([endpoint], connect_timeout=1.0)
    assert time.monotonic() - started < 3.0


async def test_calls_fail_as_unavailable_when_etcd_is_down(etcd: EmbeddedEtcd, etcd_store: EtcdStore) -> None:
    etcd.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="outcome unknown"):
        await etcd_store.txn([], [Put("/d/k", b"")], timeout=1.0)
    with pytest.raises(StoreUnavailableError):
        await etcd_store.get("/d/k", timeout=1.0)
    with pytest.raises(StoreUnavailableError):
        await etcd_store.grant(5, timeout=1.0)
    with pytest.raises(StoreUnavailableError):
        await etcd_store.refresh(1, timeout=1.0)
    assert time.monotonic() - started < 8.0


async def test_endpoint_forms_and_host_names(etcd: EmbeddedEtcd) -> None:
    port = etcd.endpoint.rsplit(":", 1)[1]
    for endpoint in (f"localhost:{port}", f"https://localhost:{port}/", etcd.endpoint, etcd.url):
        store = await EtcdStore.connect([endpoint], connect_timeout=5, **etcd.client_tls.store_args())
        await store.close()


@pytest.mark.parametrize("endpoint", ["127.0.0.1", "ftp://127.0.0.1:2379", "[::1]:2379", "h:99999", ":2379"])
async def test_malformed_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(StoreError, match="etcd endpoint"):
        await EtcdStore.connect([endpoint], connect_timeout=1)


async def test_missing_tls_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    with pytest.raises(StoreError, match=f"CA file {missing}"):
        await EtcdStore.connect([f"https://127.0.0.1:{free_port()}"], ca_file=missing, connect_timeout=1)
    with pytest.raises(StoreError, match="both a certificate file and a key file"):
        await EtcdStore.connect([f"127.0.0.1:{free_port()}"], ca_file=missing, cert_file=missing)


# -- TLS ----------------------------------------------------------------------------------------------
@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[str, dict[str, Path]]]:
    """An etcd serving clients over TLS, client certificates required: its https://localhost endpoint, PKI."""
    pki = write_test_pki(tmp_path / "pki")
    client_port, peer_port = free_ports(2)
    client, peer = f"https://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    argv = [
        str(find_etcd_binary()),
        "--name=tls",
        f"--data-dir={tmp_path / 'data'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=tls={peer}",
        f"--cert-file={pki['server_cert']}",
        f"--key-file={pki['server_key']}",
        f"--trusted-ca-file={pki['ca']}",
        "--client-cert-auth",
        "--heartbeat-interval=100",
        "--election-timeout=500",
    ]
    with (tmp_path / "etcd.log").open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield client.replace("127.0.0.1", "localhost"), pki
    finally:
        server.terminate()
        server.wait(10)


async def test_tls_with_a_client_certificate(tls_etcd: tuple[str, dict[str, Path]]) -> None:
    endpoint, pki = tls_etcd
    store = await EtcdStore.connect(
        [endpoint],
        ca_file=pki["ca"],
        cert_file=pki["client_cert"],
        key_file=pki["client_key"],
        connect_timeout=10,
    )
    try:
        written = await store.txn([], [Put("/tls", b"ok")], timeout=T)
        kv = await store.get("/tls", timeout=T)
        assert kv is not None
        assert (kv.value, kv.mod_revision) == (b"ok", written.revision)
    finally:
        await store.close()
    # No client certificate: refused at once (waiting would not help), saying what to set.
    with pytest.raises(StoreError, match=rf"{re.escape(endpoint)}.*refused this client's certificate.*--etcd-cert"):
        await EtcdStore.connect([endpoint], ca_file=pki["ca"], connect_timeout=10)
    plain = endpoint.replace("https://", "http://")
    with pytest.raises(StoreUnavailableError, match=re.escape(plain)):  # TLS port, plain-text client
        await EtcdStore.connect([plain], connect_timeout=1)


# -- embedded etcd --------------------------------------------------------------------------------------
async def test_embedded_restart_keeps_data(tmp_path: Path) -> None:
    data = tmp_path / "etcd"
    server = EmbeddedEtcd(data)
    await server.astart()
    try:
        store = await EtcdStore.connect([server.endpoint], connect_timeout=5, **server.client_tls.store_args())
        written = await store.txn([], [Put("/keep", b"me")], timeout=T)
        await store.close()
    finally:
        server.stop()
    again = EmbeddedEtcd(data)
    await again.astart()
    try:
        store = await EtcdStore.connect([again.endpoint], connect_timeout=5, **again.client_tls.store_args())
        kv = await store.get("/keep", timeout=T)
        await store.close()
    finally:
        again.stop()
    assert kv is not None
    assert (kv.value, kv.mod_revision) == (b"me", written.revision)
    assert (data / "etcd.log").stat().st_size > 0


def test_second_instance_on_the_same_data_dir_is_refused(etcd: EmbeddedEtcd) -> None:
    second = EmbeddedEtcd(etcd.data_dir)
    with pytest.raises(EmbeddedEtcdError, match=f"another etcd .*already .*{re.escape(str(etcd.data_dir))}"):
        second.start(timeout=5)
    second.stop()
    assert etcd.pid is not None


def test_etcd_exiting_at_start_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-etcd"
    fake.write_text("#!/bin/sh\necho 'etcd: something is badly wrong' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(EmbeddedEtcdError, match=r"(?s)exited with code 3.*something is badly wrong"):
        EmbeddedEtcd(tmp_path / "etcd", binary=fake).start(timeout=5)


def test_a_taken_saved_port_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "etcd"
    data.mkdir()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        (data / "ports.json").write_text(json.dumps({"client": taken, "peer": free_port()}))
        server = EmbeddedEtcd(data)
        server.start(timeout=10)
        try:
            assert server.endpoint != f"127.0.0.1:{taken}"
            assert json.loads((data / "ports.json").read_text())["client"] == int(server.endpoint.split(":")[1])
        finally:
            server.stop()


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedEtcdError, match="does not exist"):
        EmbeddedEtcd(tmp_path, binary=tmp_path / "no-etcd").start()


def test_etcd_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from vgpud._private.store.embedded_etcd import EmbeddedEtcd
        server = EmbeddedEtcd(Path(sys.argv[1]))
        server.start()
        print(server.pid, flush=True)
        sys.stdin.read()
        """
    )
    assert_etcd_dies_with_killed_parent(script, str(tmp_path / "etcd"))


# -- embedded etcd: only vgpud's certificate gets in ----------------------------------------------------
def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_files_are_private_and_certificates_are_reused(tmp_path: Path) -> None:
    data = tmp_path / "etcd"
    data.mkdir(mode=0o755)  # as an older vgpud left it
    server = EmbeddedEtcd(data)
    server.start(timeout=15)
    server.stop()
    assert mode(data) == 0o700
    assert mode(server.pki_dir) == 0o700
    for private in ("ports.json", "etcd.log", "embedded.lock", "pki/ca-key.pem", "pki/vgpud-key.pem"):
        assert mode(data / private) == 0o600, private
    assert mode(data / "pki" / "etcd-server-key.pem") == 0o600
    before = {path.name: path.read_bytes() for path in server.pki_dir.iterdir()}
    server.start(timeout=15)
    server.stop()
    assert {path.name: path.read_bytes() for path in server.pki_dir.iterdir()} == before


async def test_embedded_refuses_clients_without_vgpuds_certificate(etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError):  # plain text to a TLS port
        await EtcdStore.connect([etcd.endpoint], connect_timeout=1)
    with pytest.raises(StoreError, match="refused this client's certificate"):
        await EtcdStore.connect([etcd.endpoint], ca_file=etcd.client_tls.ca_file, connect_timeout=5)
    other = tmp_path / "other"
    pki.create_ca(other, cluster=embedded_pki.TRUST_DOMAIN)  # same names, another key
    cert, key = pki.issue(other, "vgpud", role="node")
    with pytest.raises(StoreError, match="refused this client's certificate"):
        await EtcdStore.connect(
            [etcd.endpoint], ca_file=etcd.client_tls.ca_file, cert_file=cert, key_file=key, connect_timeout=5
        )


def peer_members(port: int, context: ssl.SSLContext) -> int:
    """The HTTP status of GET /members on etcd's peer port (raft's own HTTP API)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", "/members")
        return conn.getresponse().status
    finally:
        conn.close()


def test_embedded_peer_port_needs_a_certificate_too(etcd: EmbeddedEtcd) -> None:
    peer = int(json.loads((etcd.data_dir / "ports.json").read_text())["peer"])
    anonymous = ssl.create_default_context(cafile=str(etcd.client_tls.ca_file))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        peer_members(peer, anonymous)
    assert peer_members(peer, etcd.client_tls.ssl_context()) == http.client.OK
